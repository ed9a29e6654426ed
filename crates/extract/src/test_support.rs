//! Helpers shared by the crate's unit tests.

/// Uniform values in [-0.5, 0.5) from a xorshift generator seeded with `x` (non-zero).
pub(crate) fn xorshift(mut x: u32) -> impl FnMut() -> f32 {
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }
}

//! The keyed layout of the mark on its periodic tile.
//!
//! The mark lives on a tile of [`TILE_BLOCKS`] x [`TILE_BLOCKS`] DCT blocks of the working
//! grid, repeated over the whole picture: a crop only shifts the tile cyclically, which
//! the blind detector can find. Each (block, band coefficient) of the tile is a *slot* with
//! a keyed ±1 chip and a role: a pilot slot (known sign, for synchronisation and "is a mark
//! of this key present") or one of the codeword bits.

use rand_core::RngCore;

use crate::dct::{self, BAND};
use crate::key::{MasterKey, Purpose};
use crate::motion::Tracking;
use crate::payload::CODE_BITS;

/// Tile side in blocks (128 working-grid pixels).
pub const TILE_BLOCKS: usize = 16;
/// Tile side in working-grid pixels.
pub const TILE_PX: usize = TILE_BLOCKS * crate::dct::N;
/// Slots per tile.
pub const SLOTS: usize = TILE_BLOCKS * TILE_BLOCKS * BAND.len();
/// Slots given to the pilot (a quarter): the rest carry the codeword.
pub const PILOT_SLOTS: usize = SLOTS / 4;

/// How the tile sits on the picture over time: the mark's layout version, recorded with
/// every export (`embed_params.scheme`) so a detector reads each export the way it was
/// written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `tracemark/v1`: the tile is fixed on the working grid in every frame.
    Fixed,
    /// `tracemark/v2`: the tile moves with the picture's global motion (see
    /// [`crate::motion`]), so the encoder's motion compensation carries it; on a still
    /// shot it is the same mark as `Fixed`. Its motion measure falls 2-3% short on a
    /// steady pan ([`Tracking::SharedWindow`]), so the mark slides against the picture.
    FollowsMotion,
    /// `tracemark/v3`: as `FollowsMotion`, with the motion measured without that bias
    /// ([`Tracking::OverlapWindow`]): the mark stays on the picture through a pan. On a
    /// still camera it drifts with the measure as people cross the picture.
    FollowsMotionExactly,
    /// `tracemark/v4`: as `FollowsMotionExactly` on a pan, and still on a still camera
    /// ([`Tracking::PansOnly`]: motion slower than a thumbnail pixel over eight frames is
    /// not followed). What new exports use.
    #[default]
    FollowsPans,
    /// `tracemark/v5`: as `FollowsPans`, with every band coefficient at the same amplitude
    /// ([`dct::even_band_weights`]) instead of in proportion to Watson's thresholds, so the
    /// lowest frequencies, which survive a small picture-in-picture, a broadcast chain's
    /// downscaling and heavy compression, carry as much of the mark as the highest.
    FollowsPansEvenBands,
}

impl Scheme {
    /// Every scheme, oldest first.
    pub const ALL: [Scheme; 5] = [
        Scheme::Fixed,
        Scheme::FollowsMotion,
        Scheme::FollowsMotionExactly,
        Scheme::FollowsPans,
        Scheme::FollowsPansEvenBands,
    ];

    /// The name recorded in the registry.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Fixed => "tracemark/v1",
            Scheme::FollowsMotion => "tracemark/v2",
            Scheme::FollowsMotionExactly => "tracemark/v3",
            Scheme::FollowsPans => "tracemark/v4",
            Scheme::FollowsPansEvenBands => "tracemark/v5",
        }
    }

    /// How the picture's motion is measured for the tile to follow it; `None` for a tile
    /// fixed on the screen.
    pub fn tracking(self) -> Option<Tracking> {
        match self {
            Scheme::Fixed => None,
            Scheme::FollowsMotion => Some(Tracking::SharedWindow),
            Scheme::FollowsMotionExactly => Some(Tracking::OverlapWindow),
            Scheme::FollowsPans | Scheme::FollowsPansEvenBands => Some(Tracking::PansOnly),
        }
    }

    /// Where the tile sits on the working grid `grid` in a frame whose picture has moved
    /// by `motion` picture pixels since the first frame: working-grid pixels of tile
    /// displacement.
    pub fn tile_offset(self, grid: &crate::grid::Grid, motion: (f64, f64)) -> (f64, f64) {
        match self {
            Scheme::Fixed => (0.0, 0.0),
            Scheme::FollowsMotion
            | Scheme::FollowsMotionExactly
            | Scheme::FollowsPans
            | Scheme::FollowsPansEvenBands => grid.to_work(motion),
        }
    }

    /// Whether a moved tile is scaled by the mask of its own blocks (v3 on), so each block's
    /// strength travels with the picture under it, rather than by the grid's blocks (v2).
    pub fn mask_moves_with_tile(self) -> bool {
        matches!(self, Scheme::FollowsMotionExactly | Scheme::FollowsPans | Scheme::FollowsPansEvenBands)
    }

    /// The layout a detector reads this one as: v5 as v4. They differ only in the band's
    /// amplitudes, and the detector weighs the band alike for every layout, so reading
    /// both would read the same sums twice (and count the search twice).
    pub fn read_as(self) -> Scheme {
        match self {
            Scheme::FollowsPansEvenBands => Scheme::FollowsPans,
            s => s,
        }
    }

    /// The amplitude of each band coefficient in this layout's mark (unit total energy).
    pub fn band_weights(self) -> [f32; 9] {
        match self {
            Scheme::FollowsPansEvenBands => dct::even_band_weights(),
            _ => dct::band_weights(),
        }
    }

    /// The scheme of a recorded name, `None` for one this build does not know.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Role of a slot.
pub const PILOT: u16 = u16::MAX;

/// One slot: its chip and what it carries (`PILOT` or a codeword bit index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Keyed ±1 chip.
    pub chip: i8,
    /// [`PILOT`] or the codeword bit it carries.
    pub role: u16,
}

/// All slots of the tile, indexed `block_in_tile * BAND.len() + band_index` where
/// `block_in_tile = ty * TILE_BLOCKS + tx`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileLayout {
    /// The slots.
    pub slots: Vec<Slot>,
}

impl TileLayout {
    /// The layout of `key`: a keyed shuffle assigns roles, so each codeword bit gets an
    /// equal share of slots spread over the whole tile, and chips are keyed coin flips.
    pub fn new(key: &MasterKey) -> Self {
        let mut rng = key.rng(Purpose::Layout, 0);
        let mut order: Vec<usize> = (0..SLOTS).collect();
        for i in (1..SLOTS).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut slots = vec![Slot { chip: 1, role: PILOT }; SLOTS];
        for (rank, &slot) in order.iter().enumerate() {
            slots[slot].role =
                if rank < PILOT_SLOTS { PILOT } else { ((rank - PILOT_SLOTS) % CODE_BITS) as u16 };
            slots[slot].chip = if rng.next_u32() & 1 == 0 { 1 } else { -1 };
        }
        Self { slots }
    }

    /// The pixel pattern (row-major 8x8) of every block of the tile, for slot signs given
    /// by `sign` (times each slot's chip and its band's weight in `weights`): the
    /// embedder's mark with `sign` = codeword bit or 1 for pilots, the detector's pilot
    /// reference with 0 for codeword slots.
    pub fn block_patterns(&self, weights: [f32; 9], sign: impl Fn(Slot) -> f32) -> Vec<[f32; 64]> {
        let basis = dct::band_basis();
        self.slots
            .chunks_exact(BAND.len())
            .map(|block| {
                let mut p = [0f32; 64];
                for ((slot, b), w) in block.iter().zip(&basis).zip(&weights) {
                    let a = w * f32::from(slot.chip) * sign(*slot);
                    for (d, s) in p.iter_mut().zip(b) {
                        *d += a * s;
                    }
                }
                p
            })
            .collect()
    }
}

/// Block patterns of the tile ([`TileLayout::block_patterns`]) laid out as one
/// `TILE_PX` x `TILE_PX` image, row-major.
pub fn tile_image(patterns: &[[f32; 64]]) -> Vec<f32> {
    let mut tile = vec![0f32; TILE_PX * TILE_PX];
    for (b, p) in patterns.iter().enumerate() {
        let (bx, by) = (b % TILE_BLOCKS, b / TILE_BLOCKS);
        for (y, row) in p.chunks_exact(8).enumerate() {
            tile[(by * 8 + y) * TILE_PX + bx * 8..][..8].copy_from_slice(row);
        }
    }
    tile
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_round_trip() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scheme::parse("tracemark/v9"), None);
        assert_eq!(Scheme::default(), Scheme::FollowsPans);
        assert_eq!(Scheme::Fixed.tracking(), None);
    }

    #[test]
    fn a_layout_is_read_as_one_that_moves_its_tile_the_same_way() {
        let g = crate::grid::Grid::for_frame(1920, 1080);
        for s in Scheme::ALL {
            let r = s.read_as();
            assert_eq!(r.tracking(), s.tracking(), "{s:?}");
            assert_eq!(r.tile_offset(&g, (3.5, -2.25)), s.tile_offset(&g, (3.5, -2.25)), "{s:?}");
            assert_eq!(r.read_as(), r, "{s:?}");
        }
        assert_eq!(Scheme::FollowsPansEvenBands.read_as(), Scheme::FollowsPans);
    }

    /// Each slot's coefficient in a block pattern is its chip times its band's weight, and
    /// nothing lies outside the band: equal amplitudes for v5, Watson's for v4.
    #[test]
    fn block_patterns_carry_each_band_at_its_layouts_weight() {
        let l = TileLayout::new(&MasterKey::from_seed(4));
        for scheme in [Scheme::FollowsPans, Scheme::FollowsPansEvenBands] {
            let weights = scheme.band_weights();
            assert!((weights.iter().map(|w| w * w).sum::<f32>() - 1.0).abs() < 1e-6, "{scheme:?}");
            let patterns = l.block_patterns(weights, |_| 1.0);
            for (b, p) in patterns.iter().enumerate().step_by(37) {
                let coefs = dct::forward_reference(&p.map(f64::from));
                for (k, &(v, u)) in BAND.iter().enumerate() {
                    let want = f64::from(weights[k] * f32::from(l.slots[b * BAND.len() + k].chip));
                    assert!((coefs[v * 8 + u] - want).abs() < 1e-5, "{scheme:?} block {b} band {k}");
                }
                let outside: f64 = coefs.iter().map(|c| c * c).sum::<f64>()
                    - BAND.iter().map(|&(v, u)| coefs[v * 8 + u].powi(2)).sum::<f64>();
                assert!(outside < 1e-9, "{scheme:?} block {b}: {outside}");
            }
        }
        let (even, watson) =
            (Scheme::FollowsPansEvenBands.band_weights(), Scheme::FollowsPans.band_weights());
        assert!(even.iter().all(|&w| w == even[0]));
        // Watson's thresholds give the highest coefficients (0,3) and (3,0) 1.64x the lowest.
        assert!((watson[5] / watson[0] - 1.66 / 1.01).abs() < 1e-4);
    }

    #[test]
    fn every_bit_gets_a_fair_share() {
        let l = TileLayout::new(&MasterKey::from_seed(1));
        let mut counts = vec![0usize; CODE_BITS];
        let mut pilot = 0;
        for s in &l.slots {
            if s.role == PILOT {
                pilot += 1;
            } else {
                counts[s.role as usize] += 1;
            }
        }
        assert_eq!(pilot, PILOT_SLOTS);
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1 && *lo >= 6, "{lo}..{hi}");
        assert_ne!(l, TileLayout::new(&MasterKey::from_seed(2)));
    }
}

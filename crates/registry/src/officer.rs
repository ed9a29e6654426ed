//! Officer identities: Ed25519 key pairs whose secret half is kept encrypted with a
//! passphrase (argon2id, then XChaCha20-Poly1305), and their public halves.
//!
//! The officer id is the public key in hexadecimal (64 digits); it is what the roster,
//! requests and approvals refer to. Names are for people to read; keys decide.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::names;

const SECRET_FORMAT: &str = "tracemark-officer-key";
const PUBLIC_FORMAT: &str = "tracemark-officer-public-key";
/// argon2id cost for new key files (OWASP's minimum: 19 MiB, 2 passes).
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_PASSES: u32 = 2;
/// Cost ceilings accepted when opening a file, so a hostile file cannot make us allocate
/// gigabytes or spin for minutes.
const KDF_MAX_MEMORY_KIB: u32 = 1024 * 1024;
const KDF_MAX_PASSES: u32 = 16;

/// What can go wrong with officer keys, requests and approvals.
#[derive(Debug, thiserror::Error)]
pub enum OfficerError {
    /// The file is not what it should be (format, version, field).
    #[error("{what} is malformed: {why}")]
    Malformed {
        /// What kind of file.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The passphrase does not open the key (or the file was altered).
    #[error("wrong passphrase for the officer key (or the key file was altered)")]
    WrongPassphrase,
    /// The passphrase is unusable.
    #[error("the passphrase {0}")]
    BadPassphrase(&'static str),
    /// The officer's name was refused.
    #[error("officer name {0}")]
    BadName(#[from] names::NameError),
    /// A signature does not verify.
    #[error("the {0} signature does not verify (the file was altered or signed by another key)")]
    BadSignature(&'static str),
    /// Something the approval flow refuses (expired, self-approval, wrong source...).
    #[error("{0}")]
    Refused(String),
}

/// Result with [`OfficerError`].
pub type OfficerResult<T> = std::result::Result<T, OfficerError>;

fn malformed(what: &'static str, why: impl Into<String>) -> OfficerError {
    OfficerError::Malformed { what, why: why.into() }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str, what: &'static str) -> OfficerResult<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(malformed(what, "a field is not lowercase hexadecimal"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| malformed(what, "a field is not hexadecimal"))
}

fn field<'a>(v: &'a Value, name: &str, what: &'static str) -> OfficerResult<&'a str> {
    v.get(name).and_then(Value::as_str).ok_or_else(|| malformed(what, format!("no {name:?}")))
}

/// Parses an officer id (64 lowercase hex digits) into the public key it is.
pub fn parse_officer_id(id: &str) -> OfficerResult<VerifyingKey> {
    let bytes = unhex(id, "officer id")?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| malformed("officer id", "not 64 hexadecimal digits"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| malformed("officer id", "not an Ed25519 public key"))
}

/// The first 16 digits of an officer id, for people to read.
pub fn short_id(id: &str) -> &str {
    &id[..id.len().min(16)]
}

/// An officer's public half: what `officer add` puts on the roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfficerPublic {
    /// Display name.
    pub name: String,
    /// The officer id (public key, hex).
    pub id: String,
}

impl OfficerPublic {
    /// The `FILE.pub` text.
    pub fn to_file_text(&self) -> String {
        let v = json!({"format": PUBLIC_FORMAT, "version": 1, "name": self.name, "officer_id": self.id});
        format!("{v:#}\n")
    }

    /// Parses a `FILE.pub` text (strictly: format, version, a valid key, a visible name).
    pub fn from_file_text(text: &str) -> OfficerResult<Self> {
        const W: &str = "officer public key file";
        let v: Value = serde_json::from_str(text).map_err(|e| malformed(W, e.to_string()))?;
        if v.get("format").and_then(Value::as_str) != Some(PUBLIC_FORMAT) {
            return Err(malformed(W, "not a tracemark officer public key"));
        }
        if v.get("version").and_then(Value::as_i64) != Some(1) {
            return Err(malformed(W, "unknown version"));
        }
        let name = field(&v, "name", W)?.to_string();
        names::normalise(&name)?;
        let id = field(&v, "officer_id", W)?.to_string();
        parse_officer_id(&id)?;
        Ok(Self { name, id })
    }
}

/// An officer's key pair, opened.
pub struct OfficerKey {
    name: String,
    signing: SigningKey,
}

impl std::fmt::Debug for OfficerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfficerKey").field("name", &self.name).field("id", &self.id()).finish_non_exhaustive()
    }
}

impl OfficerKey {
    /// A new key pair for `name` from the operating system's random source.
    pub fn generate(name: &str) -> OfficerResult<Self> {
        names::normalise(name)?;
        Ok(Self { name: name.to_string(), signing: SigningKey::generate(&mut OsRng) })
    }

    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The officer id (public key, hex).
    pub fn id(&self) -> String {
        hex(self.signing.verifying_key().as_bytes())
    }

    /// The public half.
    pub fn public(&self) -> OfficerPublic {
        OfficerPublic { name: self.name.clone(), id: self.id() }
    }

    /// Signs `msg` under a domain-separation `context` (so a signature made for one kind of
    /// document can never pass as another).
    pub(crate) fn sign(&self, context: &str, msg: &[u8]) -> String {
        hex(&self.signing.sign(&domain(context, msg)).to_bytes())
    }

    #[cfg(test)]
    pub(crate) fn signing_bytes_for_test(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The secret key file text: the key sealed with `passphrase`.
    pub fn seal(&self, passphrase: &str) -> OfficerResult<String> {
        check_passphrase(passphrase)?;
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let key = derive(passphrase, &salt, KDF_MEMORY_KIB, KDF_PASSES)?;
        let aad = self.id();
        let secret = Zeroizing::new(self.signing.to_bytes());
        let ct = XChaCha20Poly1305::new(key.as_ref().into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret.as_ref(), aad: aad.as_bytes() })
            .map_err(|_| OfficerError::BadPassphrase("could not be used"))?;
        let v = json!({
            "format": SECRET_FORMAT, "version": 1, "name": self.name, "officer_id": aad,
            "kdf": {"algorithm": "argon2id", "memory_kib": KDF_MEMORY_KIB, "passes": KDF_PASSES,
                    "lanes": 1, "salt": hex(&salt)},
            "aead": "xchacha20poly1305", "nonce": hex(&nonce), "sealed_key": hex(&ct),
        });
        Ok(format!("{v:#}\n"))
    }

    /// Opens a secret key file with its passphrase.
    pub fn open(text: &str, passphrase: &str) -> OfficerResult<Self> {
        const W: &str = "officer key file";
        let v: Value = serde_json::from_str(text).map_err(|e| malformed(W, e.to_string()))?;
        if v.get("format").and_then(Value::as_str) != Some(SECRET_FORMAT) {
            return Err(malformed(W, "not a tracemark officer key (a .pub file is the public half)"));
        }
        if v.get("version").and_then(Value::as_i64) != Some(1) {
            return Err(malformed(W, "unknown version"));
        }
        let name = field(&v, "name", W)?.to_string();
        names::normalise(&name)?;
        let id = field(&v, "officer_id", W)?.to_string();
        let kdf = v.get("kdf").ok_or_else(|| malformed(W, "no \"kdf\""))?;
        if kdf.get("algorithm").and_then(Value::as_str) != Some("argon2id")
            || kdf.get("lanes").and_then(Value::as_u64) != Some(1)
            || v.get("aead").and_then(Value::as_str) != Some("xchacha20poly1305")
        {
            return Err(malformed(W, "unsupported key derivation or cipher"));
        }
        let num = |k: &str, max: u32| -> OfficerResult<u32> {
            kdf.get(k)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n >= 1 && n <= max)
                .ok_or_else(|| malformed(W, format!("kdf {k} missing or out of range")))
        };
        let (memory, passes) = (num("memory_kib", KDF_MAX_MEMORY_KIB)?, num("passes", KDF_MAX_PASSES)?);
        let salt = unhex(field(kdf, "salt", W)?, W)?;
        let nonce = unhex(field(&v, "nonce", W)?, W)?;
        let ct = unhex(field(&v, "sealed_key", W)?, W)?;
        if salt.len() < 16 || nonce.len() != 24 || ct.len() != 48 {
            return Err(malformed(W, "salt, nonce or sealed key of the wrong length"));
        }
        let key = derive(passphrase, &salt, memory, passes)?;
        let secret = Zeroizing::new(
            XChaCha20Poly1305::new(key.as_ref().into())
                .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: id.as_bytes() })
                .map_err(|_| OfficerError::WrongPassphrase)?,
        );
        let bytes: [u8; 32] = secret.as_slice().try_into().map_err(|_| OfficerError::WrongPassphrase)?;
        let signing = SigningKey::from_bytes(&bytes);
        if hex(signing.verifying_key().as_bytes()) != id {
            return Err(OfficerError::WrongPassphrase);
        }
        Ok(Self { name, signing })
    }
}

fn check_passphrase(p: &str) -> OfficerResult<()> {
    if p.chars().count() < 8 {
        return Err(OfficerError::BadPassphrase("must be at least 8 characters"));
    }
    Ok(())
}

fn derive(passphrase: &str, salt: &[u8], memory_kib: u32, passes: u32) -> OfficerResult<Zeroizing<[u8; 32]>> {
    let params = Params::new(memory_kib, passes, 1, Some(32))
        .map_err(|_| malformed("officer key file", "key derivation parameters refused"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|_| malformed("officer key file", "key derivation failed"))?;
    Ok(out)
}

/// The bytes actually signed: a context string, a NUL, then the message.
fn domain(context: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + 1 + msg.len());
    m.extend_from_slice(context.as_bytes());
    m.push(0);
    m.extend_from_slice(msg);
    m
}

/// Checks an Ed25519 signature (hex) by officer `id` on `msg` under `context`.
pub(crate) fn verify_signature(
    id: &str,
    context: &str,
    msg: &[u8],
    sig_hex: &str,
    what: &'static str,
) -> OfficerResult<()> {
    let key = parse_officer_id(id)?;
    let sig = unhex(sig_hex, what)?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| OfficerError::BadSignature(what))?;
    key.verify_strict(&domain(context, msg), &Signature::from_bytes(&sig))
        .map_err(|_| OfficerError::BadSignature(what))
}

/// The registry's own signing key ("authority"), derived from the registry subkey of the
/// unit key: it signs the chain's head, roster changes and checkpoints, and its public half
/// is recorded in the registry so anyone can check them without a secret.
pub(crate) fn authority_key(mac_key: &[u8; 32]) -> OfficerKey {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(mac_key).expect("HMAC takes any key length");
    m.update(b"tracemark registry authority v1");
    let seed: [u8; 32] = m.finalize().into_bytes().into();
    OfficerKey { name: "registry".into(), signing: SigningKey::from_bytes(&seed) }
}

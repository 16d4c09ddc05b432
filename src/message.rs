//! What names a message for the replay guard: who vouched for it and which message it is.
//!
//! A replay key is 128 bits of SHA-256 over three things, each length-prefixed:
//! - the provider's canonical name (two schemes that happen to sign alike stay apart);
//! - the [`SignerId`] of the key that verified the message (a fingerprint of the secret or
//!   public key), so every route that verifies with the same provider and the same secret
//!   shares one replay namespace, whatever the route is called;
//! - the message's identity, taken **only from signed material** (a signed token or id, or a
//!   digest of exactly what the signature covers), so no unsigned header can change it.
//!
//! A message has one key per key of the route that verified it (see `providers::keyring`: a
//! sender rotating its secret signs with both the old and the new one, and a copy carrying
//! either signature alone, on any route that knows either secret, must be the same message);
//! the guard holds all of them at once.

use std::fmt;

use sha2::{Digest, Sha256};

/// A fingerprint of a verifying key: not reversible, and never printed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignerId([u8; 16]);

impl SignerId {
    /// The fingerprint of `key` (the secret's bytes as the MAC uses them, or a public key).
    pub fn of(key: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"hookguard signer v1\0")
            .chain_update(key)
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        SignerId(id)
    }
}

impl fmt::Debug for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignerId(<redacted>)")
    }
}

/// One replay key of a verified message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageKey(pub u128);

impl MessageKey {
    /// The key of the message `identity` (signed material only) of `provider`, signed by
    /// `signer`.
    pub fn new(provider: &str, signer: SignerId, identity: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update((provider.len() as u64).to_be_bytes())
            .chain_update(provider.as_bytes())
            .chain_update(signer.0)
            .chain_update((identity.len() as u64).to_be_bytes())
            .chain_update(identity)
            .finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        MessageKey(u128::from_be_bytes(first))
    }
}

/// The keys of a message signed by each of `signers`, sorted and without repeats (the order
/// in which a sender listed its signatures must not matter).
pub fn keys(provider: &str, signers: &[SignerId], identity: &[u8]) -> Vec<MessageKey> {
    let mut keys: Vec<MessageKey> = signers
        .iter()
        .map(|s| MessageKey::new(provider, *s, identity))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// 128 bits of SHA-256 over `parts`: a digest of signed material, or of a body.
pub fn digest(parts: &[&[u8]]) -> u128 {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_provider_signer_and_identity_only() {
        let a = SignerId::of(b"secret-a");
        let b = SignerId::of(b"secret-b");
        let k = MessageKey::new("mailgun", a, b"tok");
        assert_eq!(k, MessageKey::new("mailgun", a, b"tok"));
        assert_ne!(k, MessageKey::new("mailgun", b, b"tok"));
        assert_ne!(k, MessageKey::new("stripe", a, b"tok"));
        assert_ne!(k, MessageKey::new("mailgun", a, b"tok2"));
        // Length prefixes: provider and identity cannot trade bytes.
        assert_ne!(
            MessageKey::new("ab", a, b"c"),
            MessageKey::new("a", a, b"bc")
        );
    }

    #[test]
    fn the_order_of_signers_does_not_matter() {
        let a = SignerId::of(b"secret-a");
        let b = SignerId::of(b"secret-b");
        assert_eq!(keys("s", &[a, b], b"m"), keys("s", &[b, a, b], b"m"));
        assert_eq!(keys("s", &[a, b], b"m").len(), 2);
    }

    #[test]
    fn signer_ids_are_redacted() {
        assert_eq!(
            format!("{:?}", SignerId::of(b"secret")),
            "SignerId(<redacted>)"
        );
    }
}

//! A route's verifying keys and the message keys of what they verify.
//!
//! Every key of a route is tried on every request: the time taken does not tell which one
//! matched.
//!
//! A verified message gets one replay key per key **of the route**, not only per key that
//! signed it. A sender rotating its secret signs with both the old and the new one, and an
//! attacker holding such a request can send either signature alone, to this route or to
//! another that knows only one of the secrets: the copy must be the same message whichever
//! secret vouches for it. So the secrets that share a route share a replay namespace (which
//! also joins a route in the middle of a rotation to the routes still on the old secret).

use super::{SignError, Verified, VerifyError, DEFAULT_TTL};
use crate::message::{self, SignerId};
use crate::secret::Secret;

/// A message identity made of signed parts: 128 bits of SHA-256 over them (length-prefixed).
pub fn identity_of(parts: &[&[u8]]) -> [u8; 16] {
    message::digest(parts).to_be_bytes()
}

/// A route's verifying keys (secrets or public keys), each with its fingerprint.
#[derive(Clone)]
pub struct Keyring<K> {
    entries: Vec<(K, SignerId)>,
}

impl<K> Keyring<K> {
    /// `material` gives the bytes that identify a key (what the MAC is keyed with, or the
    /// encoded public key).
    pub fn new(keys: Vec<K>, material: impl Fn(&K) -> Vec<u8>) -> Self {
        let entries = keys
            .into_iter()
            .map(|k| {
                let id = SignerId::of(&material(&k));
                (k, id)
            })
            .collect();
        Keyring { entries }
    }

    /// The keys that `verifies` accepts, in the route's order. Every key is tried.
    pub fn verifying(&self, mut verifies: impl FnMut(&K) -> bool) -> Signers<'_, K> {
        let mut found = Vec::new();
        for (key, _) in &self.entries {
            if verifies(key) {
                found.push(key);
            }
        }
        Signers {
            matched: found,
            route: self.entries.iter().map(|(_, id)| *id).collect(),
        }
    }

    /// For headers that carry several signatures (a sender rolling its secret signs with
    /// both): the keys that verify any of `signatures`, and the smallest signature that
    /// verified (the one named in `X-Webhook-Id`, whatever order the sender listed them in).
    /// Every (key, signature) pair is tried once.
    pub fn verifying_any<'s, S: AsRef<[u8]> + Ord>(
        &self,
        signatures: &'s [S],
        verifies: impl Fn(&K, &[u8]) -> bool,
    ) -> (Signers<'_, K>, Option<&'s S>) {
        let mut shown: Option<&'s S> = None;
        let signers = self.verifying(|key| {
            let mut any = false;
            for sig in signatures {
                if verifies(key, sig.as_ref()) {
                    any = true;
                    if shown.is_none_or(|s| sig < s) {
                        shown = Some(sig);
                    }
                }
            }
            any
        });
        (signers, shown)
    }

    /// The first key, for `hookguard sign`.
    pub fn first(&self) -> Result<&K, SignError> {
        self.entries
            .first()
            .map(|(k, _)| k)
            .ok_or(SignError::Unsupported)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }
}

impl Keyring<Secret> {
    pub fn from_secrets(secrets: Vec<Secret>) -> Self {
        Keyring::new(secrets, |s| s.expose().as_bytes().to_vec())
    }
}

impl<K> std::fmt::Debug for Keyring<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} key(s), <redacted>)", self.entries.len())
    }
}

/// Which keys of a route verified one message.
pub struct Signers<'a, K> {
    matched: Vec<&'a K>,
    /// Every key of the route, by fingerprint.
    route: Vec<SignerId>,
}

impl<'a, K> Signers<'a, K> {
    pub fn is_empty(&self) -> bool {
        self.matched.is_empty()
    }

    /// The first matching key in the route's order (Zoom answers its challenge with it).
    pub fn first(&self) -> Option<&'a K> {
        self.matched.first().copied()
    }

    /// The verdict: `bad_signature` when no key verified the message, else the message named
    /// by `identity` (signed material only) under `provider`, with a replay key under every
    /// key of the route (see the module's comment).
    pub fn message(
        &self,
        provider: &'static str,
        identity: &[u8],
    ) -> Result<Verified, VerifyError> {
        if self.matched.is_empty() {
            return Err(VerifyError::BadSignature);
        }
        let keys = message::keys(provider, &self.route, identity);
        Ok(Verified {
            id: format!("{:032x}", keys[0].0),
            keys,
            timestamp: None,
            remember_for: DEFAULT_TTL,
            answer: None,
            event_keys: None,
            provider,
            signers: self.route.clone(),
        })
    }
}

//! Random identifiers: test deliveries signed by `hookguard sign`, and the instance id that
//! keeps replicas' reservations apart in the shared replay store. Not secrets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `len` lowercase hex digits, from the OS's random source; should it refuse, from the time,
/// the process id and a counter (still unique, no longer unpredictable).
pub fn hex_token(len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = vec![0u8; len.div_ceil(2)];
    if getrandom::fill(&mut bytes).is_err() {
        use sha2::Digest;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (block, chunk) in bytes.chunks_mut(32).enumerate() {
            let digest = sha2::Sha256::new()
                .chain_update(nanos.to_be_bytes())
                .chain_update(std::process::id().to_be_bytes())
                .chain_update(n.to_be_bytes())
                .chain_update((block as u64).to_be_bytes())
                .finalize();
            chunk.copy_from_slice(&digest[..chunk.len()]);
        }
    }
    let mut out = hex::encode(bytes);
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_length_asked_and_differ() {
        let (a, b) = (hex_token(50), hex_token(50));
        assert_eq!((a.len(), b.len()), (50, 50));
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hex_token(7).len(), 7);
    }
}

//! Why deeplock does not use the paper's literal key schedule: a known-plaintext attack
//! that recovers the master key from a model locked with it, and fails on deeplock's
//! counter-mode keystream.
//!
//! The literal reading of Deep-Lock draws one key byte per parameter byte from the AES-128
//! key expansion, extended past its 44 words. That schedule runs backwards: any 16
//! consecutive key bytes give the master key. An attacker who knows 16 consecutive bytes
//! of the original weights (a zero-initialised bias, a layer copied from a public
//! checkpoint) reads 16 key bytes off the locked file (`k = INV_SBOX[locked] XOR w`),
//! runs the schedule back to the master key and unlocks the whole model.
//!
//! THE LITERAL SCHEDULE IS INSECURE. It is implemented here, in this example only, to
//! show the attack; neither the library nor the CLI can lock with it.
//!
//! ```sh
//! cargo run --release --example key_recovery            # a table
//! cargo run --release --example key_recovery -- --json  # literal_schedule_key_recovered, ...
//! ```

use std::path::Path;

use deeplock::{reference, Direction, MasterKey, Salt, TensorCipher, INV_SBOX, SBOX};

/// AES's round constant for word `4 * j` of the schedule (j >= 1), continued past the
/// ten AES-128 uses: x^(j-1) in GF(2^8).
fn rcon(j: usize) -> u8 {
    let mut r = 1u8;
    for _ in 1..j {
        r = (r << 1) ^ if r & 0x80 != 0 { 0x1b } else { 0 };
    }
    r
}

/// The schedule's mixing of word `i - 1` into word `i` (FIPS-197 §5.2, Nk = 4).
fn temp(prev: [u8; 4], i: usize) -> [u8; 4] {
    if !i.is_multiple_of(4) {
        return prev;
    }
    [
        SBOX[prev[1] as usize] ^ rcon(i / 4),
        SBOX[prev[2] as usize],
        SBOX[prev[3] as usize],
        SBOX[prev[0] as usize],
    ]
}

/// The literal schedule: the AES-128 key expansion of `key`, extended to `len` bytes.
/// INSECURE: see the module documentation.
fn literal_schedule(key: &[u8; 16], len: usize) -> Vec<u8> {
    let words = len.div_ceil(4).max(4);
    let mut w: Vec<[u8; 4]> = key.chunks(4).map(|c| c.try_into().unwrap()).collect();
    for i in 4..words {
        let t = temp(w[i - 1], i);
        w.push(std::array::from_fn(|b| w[i - 4][b] ^ t[b]));
    }
    let mut bytes: Vec<u8> = w.concat();
    bytes.truncate(len);
    bytes
}

/// Locks or unlocks `data` (a model's parameter bytes, in order) with the literal
/// schedule's bytes `keys`: `SBOX[w XOR k]`, and back.
fn literal_apply(keys: &[u8], dir: Direction, data: &mut [u8]) {
    for (b, k) in data.iter_mut().zip(keys) {
        *b = match dir {
            Direction::Lock => SBOX[(*b ^ k) as usize],
            Direction::Unlock => INV_SBOX[*b as usize] ^ k,
        };
    }
}

/// The master key from 16 consecutive schedule bytes starting at byte `offset` of the
/// schedule, at any alignment: the four schedule words they determine are completed,
/// then the schedule is run back to its first four words.
fn recover_master_key(known: &[u8; 16], offset: usize) -> [u8; 16] {
    let skew = offset % 4;
    // The first word all of whose bytes are known, and those that follow it.
    let a = offset.div_ceil(4);
    let mut w = [[0u8; 4]; 4];
    let full = if skew == 0 { 4 } else { 3 };
    for (j, word) in w.iter_mut().take(full).enumerate() {
        let at = 4 * (a + j) - offset;
        word.copy_from_slice(&known[at..at + 4]);
    }
    if skew != 0 {
        // Word a+3 = word a-1 XOR temp(word a+2): its first `skew` bytes are known, word
        // a-1's last 4-skew; each gives the other's missing bytes.
        let t = temp(w[2], a + 3);
        let head = 4 * (a + 3) - offset; // where word a+3 starts in `known`
        for b in 0..4 {
            w[3][b] = if b < skew {
                known[head + b]
            } else {
                // Byte b of word a-1 is known[b - skew].
                known[b - skew] ^ t[b]
            };
        }
    }
    // Back: word i-4 = word i XOR temp(word i-1, i).
    let mut base = a;
    while base > 0 {
        let i = base + 3;
        let t = temp(w[2], i);
        let prev: [u8; 4] = std::array::from_fn(|b| w[3][b] ^ t[b]);
        w = [prev, w[0], w[1], w[2]];
        base -= 1;
    }
    let mut key = [0u8; 16];
    for (j, word) in w.iter().enumerate() {
        key[4 * j..4 * j + 4].copy_from_slice(word);
    }
    key
}

/// The attack on a locked byte string: 16 known plaintext bytes at `offset` give 16 key
/// bytes, from which the master key is recovered.
fn attack(locked: &[u8], plain: &[u8; 16], offset: usize) -> [u8; 16] {
    let known: [u8; 16] = std::array::from_fn(|i| INV_SBOX[locked[offset + i] as usize] ^ plain[i]);
    recover_master_key(&known, offset)
}

struct Outcome {
    literal_key: bool,
    literal_model: bool,
    ctr_key: bool,
    model_bytes: usize,
    known_tensor: String,
    known_offset: usize,
}

fn run(model: &[u8], known_at: usize, known_tensor: &str) -> deeplock::Result<Outcome> {
    let master = MasterKey::generate()?;
    // The literal schedule over the whole parameter stream.
    let schedule = literal_schedule(master.as_bytes(), model.len());
    let mut locked = model.to_vec();
    literal_apply(&schedule, Direction::Lock, &mut locked);
    let plain: [u8; 16] = model[known_at..known_at + 16].try_into().unwrap();
    let guess = attack(&locked, &plain, known_at);
    let literal_key = &guess == master.as_bytes();
    let mut unlocked = locked.clone();
    literal_apply(
        &literal_schedule(&guess, model.len()),
        Direction::Unlock,
        &mut unlocked,
    );
    let literal_model = unlocked == model;

    // deeplock's keystream (AES-128-CTR under a per-tensor nonce), same bytes known.
    let salt = Salt::generate()?;
    let cipher = TensorCipher::for_tensor(&master, &salt, known_tensor);
    let mut ctr_locked = model.to_vec();
    reference::apply(&cipher, Direction::Lock, 0, &mut ctr_locked);
    let ctr_guess = attack(&ctr_locked, &plain, known_at);
    Ok(Outcome {
        literal_key,
        literal_model,
        ctr_key: &ctr_guess == master.as_bytes(),
        model_bytes: model.len(),
        known_tensor: known_tensor.into(),
        known_offset: known_at,
    })
}

fn main() -> deeplock::Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion_mnist_cnn.safetensors");
    let file = std::fs::read(&path).map_err(|e| deeplock::Error::io(&path, e))?;
    let st = safetensors::SafeTensors::deserialize(&file)
        .map_err(|e| deeplock::Error::format(&path, e.to_string()))?;
    // The parameter stream in file order, and where the attacker's known bytes lie:
    // 16 bytes from byte 3 of the last dense layer's bias (an odd offset, to show that
    // alignment does not matter), as if copied from a public checkpoint.
    let mut names: Vec<(usize, String)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (v.data().as_ptr() as usize - file.as_ptr() as usize, n))
        .collect();
    names.sort();
    let mut model = Vec::new();
    let mut known_at = 0;
    let known_tensor = "fc2.bias";
    for (_, name) in &names {
        if name == known_tensor {
            known_at = model.len() + 3;
        }
        model.extend_from_slice(st.tensor(name).unwrap().data());
    }
    let o = run(&model, known_at, known_tensor)?;
    if json {
        println!(
            "{{\"model_bytes\": {}, \"known_tensor\": \"{}\", \"known_offset\": {}, \"literal_schedule_key_recovered\": {}, \"literal_schedule_model_recovered\": {}, \"ctr_key_recovered\": {}}}",
            o.model_bytes, o.known_tensor, o.known_offset, o.literal_key, o.literal_model, o.ctr_key
        );
        return Ok(());
    }
    println!(
        "Fashion-MNIST network, {} parameter bytes; the attacker knows 16 bytes of {} (from byte {} of the stream).",
        o.model_bytes, o.known_tensor, o.known_offset
    );
    println!("{:<44}{:>10}", "", "recovered");
    println!(
        "{:<44}{:>10}",
        "literal key schedule: master key", o.literal_key
    );
    println!(
        "{:<44}{:>10}",
        "literal key schedule: whole model", o.literal_model
    );
    println!(
        "{:<44}{:>10}",
        "deeplock (AES-128-CTR): master key", o.ctr_key
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        deeplock::hex::decode(s).unwrap()
    }

    /// FIPS-197 Appendix A.1: the first 176 bytes are AES-128's key expansion, checked
    /// against the vector's words and against the crate's own AES key schedule.
    #[test]
    fn forward_expansion_is_aes_128_key_expansion() {
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let s = literal_schedule(&key, 176 + 64);
        assert_eq!(&s[16..20], hex::<4>("a0fafe17"), "w[4]");
        assert_eq!(&s[20..32], hex::<12>("88542cb123a339392a6c7605"), "w[5..8]");
        assert_eq!(
            &s[160..176],
            hex::<16>("d014f9a8c9ee2589e13f0cc8b6630ca6"),
            "w[40..44]"
        );
        let rk = deeplock::RoundKeys::expand(&MasterKey::from_bytes(key));
        for r in 0..11 {
            assert_eq!(&s[16 * r..16 * r + 16], rk.round(r), "round key {r}");
        }
    }

    /// 16 known bytes at every alignment, early and far along the stream, give the key
    /// of a literal-schedule lock, and nothing of a counter-mode one.
    #[test]
    fn recovery_at_any_offset_and_not_from_ctr() {
        let mut rng = deeplock::rng::SplitMix64(11);
        let model: Vec<u8> = (0..5000).map(|_| rng.next_u64() as u8).collect();
        for at in [0usize, 1, 2, 3, 5, 16, 17, 1234, 4983] {
            let o = run(&model, at, "w").unwrap();
            assert!(o.literal_key && o.literal_model, "offset {at}");
            assert!(!o.ctr_key, "offset {at}");
        }
    }

    /// A wrong known plaintext gives a wrong key (the test above is not vacuous).
    #[test]
    fn wrong_plaintext_recovers_nothing() {
        let key = [7u8; 16];
        let mut data = vec![0u8; 64];
        literal_apply(&literal_schedule(&key, 64), Direction::Lock, &mut data);
        assert_eq!(attack(&data, &[0; 16], 9), key);
        assert_ne!(attack(&data, &[1; 16], 9), key);
    }
}

//! RFC 8291 Appendix A byte for byte, and the device's checks.

use super::*;

fn b(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
const UA_PUBLIC: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

fn rfc_device() -> SubKeys {
    let auth: [u8; 16] = b(AUTH).try_into().unwrap();
    let keys = SubKeys::from_parts(SecretKey::from_slice(&b(UA_PRIVATE)).unwrap(), auth);
    assert_eq!(keys.public_bytes.to_vec(), b(UA_PUBLIC));
    keys
}

#[test]
fn encrypts_the_rfc_example_byte_for_byte() {
    let ua = rfc_device();
    let sender = SecretKey::from_slice(&b(AS_PRIVATE)).unwrap();
    let salt: [u8; 16] = b(SALT).try_into().unwrap();
    let body = encrypt_with(
        &ua.public,
        &ua.public_bytes,
        &ua.auth,
        PLAINTEXT.as_bytes(),
        &sender,
        &salt,
    )
    .unwrap();
    assert_eq!(URL_SAFE_NO_PAD.encode(body), BODY);
}

#[test]
fn decrypts_the_rfc_example() {
    assert_eq!(
        decrypt(&rfc_device(), &b(BODY)).unwrap(),
        PLAINTEXT.as_bytes()
    );
}

#[test]
fn devices_check_every_byte() {
    let mut rng = Rng::from_seed(7);
    let keys = SubKeys::generate(&mut rng).unwrap();
    let sizes = [8, 100, MAX];
    for seq in [1u64, 2, 3, 1 << 40] {
        let plain = payload(seq, size_of(seq, &sizes));
        assert_eq!(plain.len(), size_of(seq, &sizes));
        let body = encrypt(&keys, &plain, &mut rng).unwrap();
        assert!(body.len() <= 4096, "{}", body.len());
        let data = URL_SAFE_NO_PAD.encode(&body);
        assert_eq!(receive(&keys, Some(&data), &sizes), Received::Intact(seq));
        // Padded base64url (as some servers send) reads the same.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&body);
        assert_eq!(receive(&keys, Some(&padded), &sizes), Received::Intact(seq));
    }
    // A byte changed in transit: the tag fails.
    let body = encrypt(&keys, &payload(5, 100), &mut rng).unwrap();
    let mut bad = body.clone();
    let last = bad.len() - 20;
    bad[last] ^= 1;
    assert_eq!(
        receive(&keys, Some(&URL_SAFE_NO_PAD.encode(&bad)), &sizes),
        Received::Unreadable
    );
    assert_eq!(decrypt(&keys, &bad), Err(CryptoError::Tag));
    // Encrypted correctly but not the bytes message 5 holds (truncated by its sender).
    let short = encrypt(&keys, &payload(5, 100)[..50], &mut rng).unwrap();
    assert_eq!(
        receive(&keys, Some(&URL_SAFE_NO_PAD.encode(&short)), &sizes),
        Received::Altered(5)
    );
    // Another subscription's keys cannot open it; nor can garbage or nothing.
    let other = SubKeys::generate(&mut rng).unwrap();
    assert_eq!(decrypt(&other, &body), Err(CryptoError::Tag));
    assert_eq!(receive(&keys, Some("%%"), &sizes), Received::Unreadable);
    assert_eq!(receive(&keys, None, &sizes), Received::Unreadable);
    assert_eq!(decrypt(&keys, &body[..30]), Err(CryptoError::Header));
}

const MAX: usize = crate::config::MAX_PAYLOAD;

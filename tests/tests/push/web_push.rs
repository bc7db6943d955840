//! Web Push as a browser's push service sees it: a VAPID-signed request (RFC 8292)
//! whose aes128gcm body (RFC 8291) only the subscription's private key opens. The
//! decryption here is written from the RFCs, independently of the server's code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_tests::{PushReceiver, Received, Reply, StoreKind};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, signature};

use crate::{Setup, send};

/// The browser's side of a subscription: its key pair and auth secret.
struct Subscription {
    private: EphemeralPrivateKey,
    public: Vec<u8>,
    auth: [u8; 16],
}

impl Subscription {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
        let public = private
            .compute_public_key()
            .expect("public")
            .as_ref()
            .to_vec();
        let mut auth = [0u8; 16];
        rng.fill(&mut auth).expect("random");
        Subscription {
            private,
            public,
            auth,
        }
    }

    /// Opens an aes128gcm body (one record) sent to this subscription.
    fn decrypt(self, body: &[u8]) -> Vec<u8> {
        let (salt, rest) = body.split_at(16);
        let rs = u32::from_be_bytes(rest[..4].try_into().expect("rs"));
        assert_eq!(rs, 4096);
        let id_len = rest[4] as usize;
        assert_eq!(id_len, 65, "keyid is the server's ephemeral public key");
        let server_public = &rest[5..5 + id_len];
        let ciphertext = &rest[5 + id_len..];
        let auth = self.auth;
        let ua_public = self.public.clone();
        let ikm = agree_ephemeral(
            self.private,
            &UnparsedPublicKey::new(&ECDH_P256, server_public),
            |shared| {
                let mut info = b"WebPush: info\0".to_vec();
                info.extend_from_slice(&ua_public);
                info.extend_from_slice(server_public);
                expand(
                    &hkdf::Salt::new(hkdf::HKDF_SHA256, &auth).extract(shared),
                    &info,
                    32,
                )
            },
        )
        .expect("ECDH");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&ikm);
        let cek = expand(&prk, b"Content-Encoding: aes128gcm\0", 16);
        let nonce = expand(&prk, b"Content-Encoding: nonce\0", 12);
        let key =
            aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek).expect("key"));
        let mut record = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                aead::Nonce::try_assume_unique_for_key(&nonce).expect("nonce"),
                aead::Aad::empty(),
                &mut record,
            )
            .expect("the body decrypts with the subscription's key");
        // The last record ends with 0x02, then optional zero padding.
        let end = plain.iter().rposition(|b| *b != 0).expect("delimiter");
        assert_eq!(plain[end], 2, "last-record delimiter");
        plain[..end].to_vec()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    prk.expand(&[info], Len(len))
        .expect("expand")
        .fill(&mut out)
        .expect("fill");
    out
}

/// Checks the VAPID authorization and returns its JWT claims.
fn verify_vapid(request: &Received, server_key: &str, audience: &str) -> serde_json::Value {
    let auth = request.header("authorization");
    let rest = auth.strip_prefix("vapid ").expect("vapid scheme");
    let mut token = "";
    let mut key = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(t) = part.strip_prefix("t=") {
            token = t;
        } else if let Some(k) = part.strip_prefix("k=") {
            key = k;
        }
    }
    assert_eq!(key, server_key, "k is the key browsers subscribed with");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS: {token}");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
    assert_eq!(header["alg"], "ES256");
    let public = URL_SAFE_NO_PAD.decode(key).expect("key b64");
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig b64");
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("the JWT verifies with the VAPID key");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    assert_eq!(claims["aud"], audience);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let exp = claims["exp"].as_i64().expect("exp");
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp within 24 h: {exp}"
    );
    assert!(
        claims["sub"]
            .as_str()
            .is_some_and(|s| s.starts_with("mailto:")),
        "{claims}"
    );
    claims
}

#[tokio::test]
async fn web_push_is_vapid_signed_and_decrypts_with_the_subscription_key() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let alex = setup.user("alex").await;
    let riya = setup.user("riya").await;
    let service = PushReceiver::start(&[], Reply::Status(201)).await;
    let settings = riya.push_settings().await.expect("settings");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(&settings.vapid_public_key)
            .expect("b64")
            .len(),
        65
    );
    let subscription = Subscription::new();
    riya.add_web_push(
        &service.url,
        &URL_SAFE_NO_PAD.encode(&subscription.public),
        &URL_SAFE_NO_PAD.encode(subscription.auth),
    )
    .await
    .expect("subscribe");

    send(&alex, "riya", "lunch?").await;
    let last = send(&alex, "riya", "at noon").await;
    setup
        .wait_counter("chat_push_sent_total", &[("provider", "web_push")], 1)
        .await;
    let received = service.received();
    assert_eq!(received.len(), 1, "one push for the burst");
    let push = &received[0];
    assert_eq!(push.method, "POST");
    assert_eq!(push.header("content-encoding"), "aes128gcm");
    assert!(push.header("ttl").parse::<u64>().is_ok(), "TTL header");
    let audience = service.url.trim_end_matches("/push");
    verify_vapid(push, &settings.vapid_public_key, audience);

    let plain = subscription.decrypt(&push.body);
    let notification: serde_json::Value = serde_json::from_slice(&plain).expect("JSON inside");
    assert_eq!(notification["title"], "alex");
    assert_eq!(notification["body"], "at noon");
    assert_eq!(notification["unread"], 2);
    assert_eq!(notification["badge"], 2);
    assert_eq!(notification["seq"], last.seq);
    assert_eq!(notification["conversation_id"], last.conversation_id);
    assert!(
        !String::from_utf8_lossy(&push.body).contains("noon"),
        "the text travels encrypted"
    );
}

#[tokio::test]
async fn a_subscription_the_push_service_says_is_gone_is_removed() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let alex = setup.user("alex").await;
    let riya = setup.user("riya").await;
    let service = PushReceiver::start(&[], Reply::Status(410)).await;
    let subscription = Subscription::new();
    riya.add_web_push(
        &service.url,
        &URL_SAFE_NO_PAD.encode(&subscription.public),
        &URL_SAFE_NO_PAD.encode(subscription.auth),
    )
    .await
    .expect("subscribe");
    send(&alex, "riya", "lunch?").await;
    setup
        .wait_counter(
            "chat_push_targets_gone_total",
            &[("provider", "web_push")],
            1,
        )
        .await;
    assert!(riya.push_targets().await.expect("list").is_empty());
    assert_eq!(
        service.received().len(),
        1,
        "no retries to a gone subscription"
    );
}

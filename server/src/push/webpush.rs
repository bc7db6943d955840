//! Web Push (RFC 8030): the server's VAPID identity (RFC 8292), the aes128gcm payload
//! encryption a browser's service worker can decrypt (RFC 8291 over RFC 8188), and the
//! provider that POSTs encrypted notifications to a subscription's push service.
//!
//! Everything cryptographic is `ring`: ECDSA P-256 for the VAPID token, ephemeral ECDH
//! P-256, HKDF-SHA-256 and AES-128-GCM for the payload.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::Uri;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use ring::{aead, agreement, digest, hkdf};

use super::http::{HttpClient, HttpError, PostResponse};
use super::notification::Notification;
use super::provider::{Outcome, Provider, error_outcome, response_outcome};
use crate::domain::Timestamp;
use crate::store::{PushEndpoint, PushTarget};

/// The record size the header announces. The whole payload is one record, so this only
/// bounds the plaintext.
const RECORD_SIZE: u32 = 4096;
const SALT_LEN: usize = 16;
/// An uncompressed P-256 point: 0x04 || x || y.
const POINT_LEN: usize = 65;
const AUTH_SECRET_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// salt || rs || idlen || keyid (the sender's ephemeral public key).
pub const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
/// The largest plaintext one record holds: a record is the plaintext, the 0x02
/// delimiter and the AEAD tag.
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - TAG_LEN - 1;
/// Push services must accept bodies of 4096 bytes (RFC 8030 §7.2) and may refuse
/// more; the header and the record's overhead come out of those.
pub const MAX_NOTIFICATION_JSON: usize = 4096 - HEADER_LEN - 1 - TAG_LEN;
/// RFC 8292 allows up to 24 hours; half of it leaves room for clock skew.
const JWT_LIFETIME_SECS: i64 = 12 * 60 * 60;
/// 24 bytes of hash are exactly 32 base64url characters, the most a Topic may have.
const TOPIC_HASH_BYTES: usize = 24;
const JWT_HEADER: &[u8] = br#"{"typ":"JWT","alg":"ES256"}"#;
const KEY_INFO: &[u8] = b"WebPush: info\0";
const CEK_INFO: &[u8] = b"Content-Encoding: aes128gcm\0";
const NONCE_INFO: &[u8] = b"Content-Encoding: nonce\0";
const ELLIPSIS: &str = "\u{2026}";

#[derive(Debug, thiserror::Error)]
pub enum WebPushError {
    #[error("invalid VAPID key: {0}")]
    InvalidVapidKey(String),
    /// The subscription's p256dh or auth can't be used.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(&'static str),
    #[error("invalid push endpoint: {0}")]
    InvalidEndpoint(String),
    #[error("a {0}-byte payload does not fit one push message")]
    TooLarge(usize),
    /// A failure inside the crypto library (randomness, signing): not the input's
    /// fault, and not expected to repeat.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The server's VAPID key pair (ECDSA P-256). Push services tie a subscription to the
/// public key the browser subscribed with, so it must stay the same across restarts
/// and replicas: keep the PKCS#8 `generate` returns, or configure a raw pair.
pub struct VapidKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private half.
        f.debug_struct("VapidKey")
            .field("public", &self.public_key_b64())
            .finish()
    }
}

impl VapidKey {
    /// A new key pair, and its PKCS#8 document (base64url, no padding) to store.
    pub fn generate() -> Result<(Self, String), WebPushError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| WebPushError::Crypto("generating a VAPID key"))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, URL_SAFE_NO_PAD.encode(pkcs8.as_ref())))
    }

    /// The key `generate` stored.
    pub fn from_pkcs8_b64(pkcs8_b64: &str) -> Result<Self, WebPushError> {
        let der = decode_b64url(pkcs8_b64)
            .map_err(|e| WebPushError::InvalidVapidKey(format!("PKCS#8 base64: {e}")))?;
        Self::from_pkcs8(&der)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, WebPushError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| WebPushError::InvalidVapidKey(format!("PKCS#8: {e}")))?;
        Ok(VapidKey { pair, rng })
    }

    /// A pair as `web-push generate-vapid-keys` prints it: the private scalar (32
    /// bytes) and the uncompressed public point (65 bytes), both base64url. The two
    /// must belong together.
    pub fn from_raw_b64(private_b64: &str, public_b64: &str) -> Result<Self, WebPushError> {
        let private = decode_b64url(private_b64)
            .map_err(|e| WebPushError::InvalidVapidKey(format!("private key base64: {e}")))?;
        let public = decode_b64url(public_b64)
            .map_err(|e| WebPushError::InvalidVapidKey(format!("public key base64: {e}")))?;
        if private.is_empty() || private.len() > 32 {
            return Err(WebPushError::InvalidVapidKey(format!(
                "the private key is {} bytes, not 32",
                private.len()
            )));
        }
        // Some tools print the scalar without its leading zero bytes; ring wants all 32.
        let mut scalar = [0u8; 32];
        scalar[32 - private.len()..].copy_from_slice(&private);
        if public.len() != POINT_LEN || public.first() != Some(&0x04) {
            return Err(WebPushError::InvalidVapidKey(
                "the public key is not an uncompressed P-256 point (65 bytes, 0x04 first)".into(),
            ));
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &scalar,
            &public,
            &rng,
        )
        .map_err(|e| WebPushError::InvalidVapidKey(format!("the key pair: {e}")))?;
        Ok(VapidKey { pair, rng })
    }

    /// The public key as browsers take it for `applicationServerKey`: the
    /// uncompressed point, base64url without padding.
    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())
    }

    /// The `authorization` header for a push to `endpoint` (RFC 8292):
    /// `vapid t=<JWT>, k=<public key>`, the JWT signed with ES256 and claiming the
    /// endpoint's origin as `aud`, `now_unix + 12 h` as `exp` and `subject` as `sub`.
    pub fn authorization(
        &self,
        endpoint: &str,
        subject: &str,
        now_unix: i64,
    ) -> Result<String, WebPushError> {
        let aud = audience(endpoint)?;
        let claims = serde_json::json!({
            "aud": aud,
            "exp": now_unix.saturating_add(JWT_LIFETIME_SECS),
            "sub": subject,
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(JWT_HEADER);
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?));
        // The FIXED algorithm signs as JWS wants it: r || s, 32 bytes each.
        let signature = self
            .pair
            .sign(&self.rng, jwt.as_bytes())
            .map_err(|_| WebPushError::Crypto("signing the VAPID token"))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(format!("vapid t={jwt}, k={}", self.public_key_b64()))
    }
}

/// The push service's origin, the JWT's audience: scheme, host and a non-default port.
fn audience(endpoint: &str) -> Result<String, WebPushError> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| WebPushError::InvalidEndpoint(format!("{endpoint:?}: {e}")))?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("https") => ("https", 443),
        Some("http") => ("http", 80),
        _ => {
            return Err(WebPushError::InvalidEndpoint(format!(
                "{endpoint:?}: not an http(s) URL"
            )));
        }
    };
    let host = match uri.host() {
        Some(host) if !host.is_empty() => host.to_ascii_lowercase(),
        _ => {
            return Err(WebPushError::InvalidEndpoint(format!(
                "{endpoint:?}: no host"
            )));
        }
    };
    Ok(match uri.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Encrypts `plaintext` for a subscription (RFC 8291): a fresh ephemeral ECDH key and
/// salt per message, and one aes128gcm record (RFC 8188). The output is the whole
/// request body: salt(16) || rs(4, = 4096) || idlen(1, = 65) || the ephemeral public
/// key(65) || ciphertext and tag.
pub fn encrypt(
    ua_public: &[u8],
    auth_secret: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, WebPushError> {
    check_subscription(ua_public, auth_secret)?;
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(WebPushError::TooLarge(plaintext.len()));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt)
        .map_err(|_| WebPushError::Crypto("drawing the salt"))?;
    let as_private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| WebPushError::Crypto("generating the ephemeral key"))?;
    let as_public = as_private
        .compute_public_key()
        .map_err(|_| WebPushError::Crypto("computing the ephemeral public key"))?;
    let ua_key = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    // The shared secret only lives inside the closure.
    agreement::agree_ephemeral(as_private, &ua_key, |ecdh_secret| {
        seal(
            ecdh_secret,
            auth_secret,
            &salt,
            ua_public,
            as_public.as_ref(),
            plaintext,
        )
    })
    .map_err(|_| WebPushError::InvalidSubscription("p256dh is not a point on P-256"))?
}

fn check_subscription(p256dh: &[u8], auth: &[u8]) -> Result<(), WebPushError> {
    if p256dh.len() != POINT_LEN || p256dh.first() != Some(&0x04) {
        return Err(WebPushError::InvalidSubscription(
            "p256dh is not an uncompressed P-256 point (65 bytes, 0x04 first)",
        ));
    }
    if auth.len() != AUTH_SECRET_LEN {
        return Err(WebPushError::InvalidSubscription("auth is not 16 bytes"));
    }
    Ok(())
}

/// Everything after the key agreement, with every input given: `encrypt` draws the
/// ephemeral key and salt, the tests give RFC 8291's.
fn seal(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    salt: &[u8; SALT_LEN],
    ua_public: &[u8],
    as_public: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, WebPushError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(WebPushError::TooLarge(plaintext.len()));
    }
    let id_len = u8::try_from(as_public.len())
        .map_err(|_| WebPushError::Crypto("the ephemeral public key is too long"))?;
    let (cek, nonce) = derive(ecdh_secret, auth_secret, salt, ua_public, as_public)?;
    let key = aead::UnboundKey::new(&aead::AES_128_GCM, &cek)
        .map_err(|_| WebPushError::Crypto("the content encryption key"))?;
    let key = aead::LessSafeKey::new(key);

    // One record, so it is the last: the 0x02 delimiter and no padding. Its sequence
    // number is 0, so its nonce is NONCE itself.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(0x02);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::empty(),
        &mut record,
    )
    .map_err(|_| WebPushError::Crypto("sealing the record"))?;

    let mut body = Vec::with_capacity(HEADER_LEN + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(id_len);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// RFC 8291 §3.4 and RFC 8188 §2.2: the content encryption key and nonce.
fn derive(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    salt: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
) -> Result<([u8; 16], [u8; 12]), WebPushError> {
    let fail = |_: ring::error::Unspecified| WebPushError::Crypto("HKDF");
    // PRK_key = HKDF-Extract(salt = auth_secret, IKM = ecdh_secret)
    let prk_key = hkdf::Salt::new(hkdf::HKDF_SHA256, auth_secret).extract(ecdh_secret);
    // IKM = HKDF-Expand(PRK_key, "WebPush: info" || 0x00 || ua_public || as_public, 32)
    let mut ikm = [0u8; 32];
    prk_key
        .expand(&[KEY_INFO, ua_public, as_public], OutputLen(ikm.len()))
        .and_then(|okm| okm.fill(&mut ikm))
        .map_err(fail)?;
    // PRK = HKDF-Extract(salt, IKM)
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&ikm);
    let mut cek = [0u8; 16];
    prk.expand(&[CEK_INFO], OutputLen(cek.len()))
        .and_then(|okm| okm.fill(&mut cek))
        .map_err(fail)?;
    let mut nonce = [0u8; 12];
    prk.expand(&[NONCE_INFO], OutputLen(nonce.len()))
        .and_then(|okm| okm.fill(&mut nonce))
        .map_err(fail)?;
    Ok((cek, nonce))
}

/// ring's HKDF takes the output length as a `KeyType`.
struct OutputLen(usize);

impl hkdf::KeyType for OutputLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// The RFC 8030 Topic for a conversation's pushes: a newer push with the same topic
/// replaces an undelivered older one at the push service, so a phone that was offline
/// gets one notification per conversation, not the backlog. Hashed so the push service
/// doesn't learn conversation ids; 32 base64url characters, the most a Topic may have.
fn topic(conversation_id: &str) -> String {
    let hash = digest::digest(&digest::SHA256, conversation_id.as_bytes());
    URL_SAFE_NO_PAD.encode(&hash.as_ref()[..TOPIC_HASH_BYTES])
}

/// The notification's JSON, with the message text shortened (ending in "…") when the
/// whole would not fit one push message.
fn payload(notification: &Notification) -> Result<Vec<u8>, WebPushError> {
    let mut json = serde_json::to_vec(notification)?;
    if json.len() <= MAX_NOTIFICATION_JSON {
        return Ok(json);
    }
    let mut shortened = notification.clone();
    // One round cuts exactly enough when `json_len` counts as serde_json escapes; the
    // bound only keeps a miscount from looping.
    for _ in 0..4 {
        let Some(text) = shortened.body.take() else {
            break;
        };
        let needed = json.len().saturating_sub(MAX_NOTIFICATION_JSON) + ELLIPSIS.len();
        let mut cut = 0;
        let mut end = text.len();
        for (at, c) in text.char_indices().rev() {
            if cut >= needed {
                break;
            }
            cut += json_len(c);
            end = at;
        }
        // A text cut to nothing is dropped.
        if end > 0 {
            shortened.body = Some(format!("{}{ELLIPSIS}", &text[..end]));
        }
        json = serde_json::to_vec(&shortened)?;
        if json.len() <= MAX_NOTIFICATION_JSON {
            return Ok(json);
        }
    }
    Err(WebPushError::TooLarge(json.len()))
}

/// The bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
        '\u{00}'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

/// Sends notifications to Web Push subscriptions.
pub struct WebPushProvider {
    pub http: Arc<HttpClient>,
    pub vapid: Arc<VapidKey>,
    /// RFC 8292 `sub`: a mailto: or https: URI the push service can reach us at.
    pub subject: String,
    /// How long the push service keeps a message for a device that is offline.
    pub ttl: Duration,
}

/// Request headers, as the HTTP client takes them.
type Headers = Vec<(&'static str, String)>;

impl WebPushProvider {
    pub fn new(
        http: Arc<HttpClient>,
        vapid: Arc<VapidKey>,
        subject: String,
        ttl: Duration,
    ) -> Self {
        WebPushProvider {
            http,
            vapid,
            subject,
            ttl,
        }
    }

    /// The headers and encrypted body of one push.
    fn request(
        &self,
        endpoint: &str,
        p256dh: &[u8],
        auth: &[u8],
        notification: &Notification,
        now_unix: i64,
    ) -> Result<(Headers, Vec<u8>), WebPushError> {
        let body = encrypt(p256dh, auth, &payload(notification)?)?;
        let headers = vec![
            ("content-encoding", "aes128gcm".to_owned()),
            ("content-type", "application/octet-stream".to_owned()),
            ("ttl", self.ttl.as_secs().to_string()),
            // A chat message is worth waking a phone for.
            ("urgency", "high".to_owned()),
            ("topic", topic(&notification.conversation_id)),
            (
                "authorization",
                self.vapid
                    .authorization(endpoint, &self.subject, now_unix)?,
            ),
        ];
        Ok((headers, body))
    }
}

#[async_trait]
impl Provider for WebPushProvider {
    async fn deliver(&self, target: &PushTarget, notification: &Notification) -> Outcome {
        let PushEndpoint::WebPush {
            endpoint,
            p256dh,
            auth,
        } = &target.endpoint
        else {
            return Outcome::Rejected(format!(
                "a {} target given to the Web Push provider",
                target.endpoint.kind()
            ));
        };
        let now_unix = Timestamp::now().unix_seconds();
        let (headers, body) = match self.request(endpoint, p256dh, auth, notification, now_unix) {
            Ok(request) => request,
            Err(error) => return outcome_for_request_error(&error),
        };
        match self.http.post(endpoint, &headers, body).await {
            Ok(response) => outcome_for_response(&response),
            Err(error) => outcome_for_http_error(&error),
        }
    }
}

fn outcome_for_request_error(error: &WebPushError) -> Outcome {
    match error {
        // A fault of the moment in the crypto library, not of this target.
        WebPushError::Crypto(_) => Outcome::Retry(format!("web push: {error}")),
        _ => Outcome::Rejected(format!("web push: {error}")),
    }
}

/// 404 and 410 mean the subscription expired or was dropped (see
/// `provider::response_outcome`; 400, 401 and 403 for a VAPID problem, or 413 for a
/// payload too large, would only be refused again).
fn outcome_for_response(response: &PostResponse) -> Outcome {
    response_outcome(response, "push service", &[404, 410])
}

fn outcome_for_http_error(error: &HttpError) -> Outcome {
    error_outcome(error, "web push")
}

/// base64url as configured by hand: padding, surrounding space and the standard
/// alphabet's `+` and `/` are forgiven.
fn decode_b64url(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let cleaned: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(cleaned)
}

#[cfg(test)]
mod tests {
    use ring::hmac;

    use super::*;

    // RFC 8291 Appendix A (checked against the RFC text, and recomputed independently
    // with Python's `cryptography` before being copied here).
    const RFC_PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const RFC_AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const RFC_UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const RFC_UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const RFC_SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const RFC_AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const RFC_ECDH_SECRET: &str = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs";
    const RFC_CEK: &str = "oIhVW04MRdy2XN9CiKLxTg";
    const RFC_NONCE: &str = "4h_95klXJ5E_qnoN";
    /// RFC 8291 §5: the whole body (header and ciphertext), 144 bytes.
    const RFC_BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";
    /// The RFC's user agent key pair as PKCS#8 (made with Python's `cryptography`).
    const RFC_UA_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgq1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM96hRANCAAQlcbK-zf3jYFUarx7Q9M02bBHOvlVfiby3sYalMzkXMWjs4uvgGFl70wR5uG48j47O1XfKWRh-kkaZDbaCAIsO";

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).expect("base64url")
    }

    // --- the user agent's side, written from RFC 8291 / RFC 8188 without the code
    // under test: HKDF from HMAC directly, the header parsed by hand ---

    fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm)
            .as_ref()
            .to_vec()
    }

    /// HKDF-Expand for outputs of at most one SHA-256 block: T(1) = HMAC(PRK, info || 1).
    fn hkdf_expand(prk: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        assert!(len <= 32);
        let mut input = info.to_vec();
        input.push(1);
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, prk), &input).as_ref()[..len].to_vec()
    }

    /// The sender's public key (the header's keyid) of an aes128gcm message.
    fn sender_key(message: &[u8]) -> &[u8] {
        let id_len = usize::from(message[20]);
        &message[21..21 + id_len]
    }

    /// Decrypts a one-record aes128gcm Web Push message given the ECDH secret.
    fn ua_decrypt(ecdh_secret: &[u8], ua_public: &[u8], auth: &[u8], message: &[u8]) -> Vec<u8> {
        let salt = &message[..16];
        let rs = u32::from_be_bytes(message[16..20].try_into().expect("4 bytes"));
        let as_public = sender_key(message);
        let ciphertext = &message[21 + as_public.len()..];
        assert!(ciphertext.len() <= rs as usize, "one record");

        let prk_key = hkdf_extract(auth, ecdh_secret);
        let mut key_info = b"WebPush: info\x00".to_vec();
        key_info.extend_from_slice(ua_public);
        key_info.extend_from_slice(as_public);
        let ikm = hkdf_expand(&prk_key, &key_info, 32);
        let prk = hkdf_extract(salt, &ikm);
        let cek = hkdf_expand(&prk, b"Content-Encoding: aes128gcm\x00", 16);
        let nonce = hkdf_expand(&prk, b"Content-Encoding: nonce\x00", 12);

        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_128_GCM, &cek).expect("AES-128 key"),
        );
        let mut record = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                aead::Nonce::try_assume_unique_for_key(&nonce).expect("12-byte nonce"),
                aead::Aad::empty(),
                &mut record,
            )
            .expect("the record authenticates");
        // Padding is zeros after the delimiter; the last record's delimiter is 0x02.
        let end = plain.iter().rposition(|&b| b != 0).expect("a delimiter");
        assert_eq!(plain[end], 0x02, "last-record delimiter");
        plain[..end].to_vec()
    }

    fn ua_key() -> (agreement::EphemeralPrivateKey, Vec<u8>) {
        let rng = SystemRandom::new();
        let private =
            agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).expect("UA key");
        let public = private
            .compute_public_key()
            .expect("UA public key")
            .as_ref()
            .to_vec();
        (private, public)
    }

    fn ua_ecdh(ua_private: agreement::EphemeralPrivateKey, message: &[u8]) -> Vec<u8> {
        let as_public =
            agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, sender_key(message));
        agreement::agree_ephemeral(ua_private, &as_public, |secret| secret.to_vec())
            .expect("ECDH with the sender's key")
    }

    // --- encryption ---

    #[test]
    fn derivation_matches_rfc_8291_appendix_a() {
        let (cek, nonce) = derive(
            &b64(RFC_ECDH_SECRET),
            &b64(RFC_AUTH),
            &b64(RFC_SALT),
            &b64(RFC_UA_PUBLIC),
            &b64(RFC_AS_PUBLIC),
        )
        .expect("derive");
        assert_eq!(URL_SAFE_NO_PAD.encode(cek), RFC_CEK);
        assert_eq!(URL_SAFE_NO_PAD.encode(nonce), RFC_NONCE);
    }

    #[test]
    fn sealing_the_rfc_inputs_gives_the_rfc_message() {
        let salt: [u8; 16] = b64(RFC_SALT).try_into().expect("16-byte salt");
        let body = seal(
            &b64(RFC_ECDH_SECRET),
            &b64(RFC_AUTH),
            &salt,
            &b64(RFC_UA_PUBLIC),
            &b64(RFC_AS_PUBLIC),
            RFC_PLAINTEXT.as_bytes(),
        )
        .expect("seal");
        assert_eq!(URL_SAFE_NO_PAD.encode(body), RFC_BODY);
    }

    #[test]
    fn the_test_decryptor_reads_the_rfc_message() {
        // Proves the independent decryptor before it judges `encrypt`.
        let plain = ua_decrypt(
            &b64(RFC_ECDH_SECRET),
            &b64(RFC_UA_PUBLIC),
            &b64(RFC_AUTH),
            &b64(RFC_BODY),
        );
        assert_eq!(plain, RFC_PLAINTEXT.as_bytes());
    }

    #[test]
    fn encrypt_round_trips_through_the_user_agent() {
        let (ua_private, ua_public) = ua_key();
        let mut auth = [0u8; 16];
        SystemRandom::new().fill(&mut auth).expect("auth secret");
        let plaintext = br#"{"title":"alex","body":"are you there?"}"#;

        let message = encrypt(&ua_public, &auth, plaintext).expect("encrypt");
        assert_eq!(message.len(), HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
        assert_eq!(&message[16..20], &4096u32.to_be_bytes());
        assert_eq!(message[20], 65);
        assert_eq!(sender_key(&message)[0], 0x04);

        let ecdh_secret = ua_ecdh(ua_private, &message);
        assert_eq!(
            ua_decrypt(&ecdh_secret, &ua_public, &auth, &message),
            plaintext
        );
    }

    #[test]
    fn every_message_has_a_fresh_salt_and_key() {
        let (_, ua_public) = ua_key();
        let auth = [7u8; 16];
        let a = encrypt(&ua_public, &auth, b"same").expect("encrypt");
        let b = encrypt(&ua_public, &auth, b"same").expect("encrypt");
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(sender_key(&a), sender_key(&b), "ephemeral key");
    }

    #[test]
    fn the_plaintext_must_fit_one_record() {
        let (ua_private, ua_public) = ua_key();
        let auth = [1u8; 16];
        let largest = vec![b'x'; MAX_PLAINTEXT];
        let message = encrypt(&ua_public, &auth, &largest).expect("4079 bytes fit");
        assert_eq!(message.len() - HEADER_LEN, 4096, "a full record");
        let ecdh_secret = ua_ecdh(ua_private, &message);
        assert_eq!(
            ua_decrypt(&ecdh_secret, &ua_public, &auth, &message),
            largest
        );

        let too_large = vec![b'x'; MAX_PLAINTEXT + 1];
        assert!(matches!(
            encrypt(&ua_public, &auth, &too_large),
            Err(WebPushError::TooLarge(4080))
        ));
    }

    #[test]
    fn unusable_subscription_keys_are_refused() {
        let (_, ua_public) = ua_key();
        let auth = [1u8; 16];
        let short = &ua_public[..64];
        assert!(matches!(
            encrypt(short, &auth, b"x"),
            Err(WebPushError::InvalidSubscription(_))
        ));
        let mut compressed_tag = ua_public.clone();
        compressed_tag[0] = 0x02;
        assert!(matches!(
            encrypt(&compressed_tag, &auth, b"x"),
            Err(WebPushError::InvalidSubscription(_))
        ));
        let off_curve = [0x04u8; 65];
        assert!(matches!(
            encrypt(&off_curve, &auth, b"x"),
            Err(WebPushError::InvalidSubscription(_))
        ));
        assert!(matches!(
            encrypt(&ua_public, &[1u8; 15], b"x"),
            Err(WebPushError::InvalidSubscription(_))
        ));
    }

    // --- VAPID ---

    fn json_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&b64(part)).expect("JSON")
    }

    #[test]
    fn the_vapid_token_verifies_and_claims_the_push_service() {
        let (key, _) = VapidKey::generate().expect("generate");
        let header = key
            .authorization(
                "https://fcm.googleapis.com/fcm/send/abc:def?x=1",
                "mailto:ops@example.com",
                1_700_000_000,
            )
            .expect("authorization");

        let rest = header.strip_prefix("vapid t=").expect("vapid scheme");
        let (jwt, k) = rest.split_once(", k=").expect("t and k");
        assert_eq!(k, key.public_key_b64());
        let public = b64(k);
        assert_eq!(public.len(), 65);
        assert_eq!(public[0], 0x04);

        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let head = json_part(parts[0]);
        assert_eq!(head["typ"], "JWT");
        assert_eq!(head["alg"], "ES256");
        let claims = json_part(parts[1]);
        assert_eq!(claims["aud"], "https://fcm.googleapis.com");
        assert_eq!(claims["exp"], 1_700_000_000i64 + 12 * 3600);
        assert_eq!(claims["sub"], "mailto:ops@example.com");

        let sig = b64(parts[2]);
        assert_eq!(sig.len(), 64, "r || s, not DER");
        let signed = format!("{}.{}", parts[0], parts[1]);
        let verifier =
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public);
        verifier
            .verify(signed.as_bytes(), &sig)
            .expect("the signature verifies with k");
        assert!(verifier.verify(b"something else", &sig).is_err());
    }

    #[test]
    fn the_audience_is_the_endpoint_origin() {
        let aud = |url: &str| audience(url).expect("audience");
        assert_eq!(
            aud("https://updates.push.services.mozilla.com/wpush/v2/gAAA"),
            "https://updates.push.services.mozilla.com"
        );
        assert_eq!(
            aud("https://Push.Example.COM:443/x"),
            "https://push.example.com"
        );
        assert_eq!(
            aud("https://push.example.com:8443/x"),
            "https://push.example.com:8443"
        );
        assert_eq!(aud("http://127.0.0.1:9000/push/1"), "http://127.0.0.1:9000");
        assert_eq!(aud("http://localhost/p"), "http://localhost");
        assert!(matches!(
            audience("ftp://x/y"),
            Err(WebPushError::InvalidEndpoint(_))
        ));
        assert!(matches!(
            audience("/relative"),
            Err(WebPushError::InvalidEndpoint(_))
        ));
    }

    #[test]
    fn stored_and_configured_keys_load_as_the_same_pair() {
        let (key, pkcs8_b64) = VapidKey::generate().expect("generate");
        let reloaded = VapidKey::from_pkcs8_b64(&pkcs8_b64).expect("from PKCS#8");
        assert_eq!(reloaded.public_key_b64(), key.public_key_b64());

        // ring writes P-256 PKCS#8 in one fixed layout: the 32-byte scalar after
        // `04 20` at offset 34, the 65-byte point after `03 42 00` at offset 70.
        let der = b64(&pkcs8_b64);
        assert_eq!(der.len(), 138);
        assert_eq!(der[34..36], [0x04, 0x20]);
        assert_eq!(der[70..73], [0x03, 0x42, 0x00]);
        let raw = VapidKey::from_raw_b64(
            &URL_SAFE_NO_PAD.encode(&der[36..68]),
            &URL_SAFE_NO_PAD.encode(&der[73..138]),
        )
        .expect("from the raw pair");
        assert_eq!(raw.public_key_b64(), key.public_key_b64());
    }

    #[test]
    fn a_known_pair_loads_either_way() {
        let raw = VapidKey::from_raw_b64(RFC_UA_PRIVATE, RFC_UA_PUBLIC).expect("raw pair");
        assert_eq!(raw.public_key_b64(), RFC_UA_PUBLIC);
        let pkcs8 = VapidKey::from_pkcs8_b64(RFC_UA_PKCS8).expect("PKCS#8");
        assert_eq!(pkcs8.public_key_b64(), RFC_UA_PUBLIC);
        // Hand-configured values are forgiven padding and whitespace.
        let padded =
            VapidKey::from_raw_b64(&format!(" {RFC_UA_PRIVATE}= "), RFC_UA_PUBLIC).expect("padded");
        assert_eq!(padded.public_key_b64(), RFC_UA_PUBLIC);
        // The token names the configured public key as the one to verify it with.
        let header = raw
            .authorization("https://push.example/1", "mailto:a@b.c", 0)
            .expect("t");
        assert!(header.ends_with(&format!(", k={RFC_UA_PUBLIC}")));
    }

    #[test]
    fn mismatched_or_malformed_keys_are_refused() {
        assert!(matches!(
            VapidKey::from_raw_b64(RFC_UA_PRIVATE, RFC_AS_PUBLIC),
            Err(WebPushError::InvalidVapidKey(_))
        ));
        assert!(matches!(
            VapidKey::from_raw_b64("not base64!", RFC_UA_PUBLIC),
            Err(WebPushError::InvalidVapidKey(_))
        ));
        assert!(matches!(
            VapidKey::from_raw_b64(RFC_UA_PRIVATE, RFC_AUTH),
            Err(WebPushError::InvalidVapidKey(_))
        ));
        assert!(matches!(
            VapidKey::from_pkcs8_b64(RFC_AUTH),
            Err(WebPushError::InvalidVapidKey(_))
        ));
    }

    // --- the provider's request ---

    fn notification(body: Option<String>) -> Notification {
        Notification {
            delivery_id: "d-1".into(),
            user: "riya".into(),
            conversation_id: "0190c7a4-0000-7000-8000-000000000001".into(),
            seq: 42,
            unread: 3,
            badge: 5,
            title: "alex".into(),
            body,
            sender: Some("alex".into()),
            sent_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn topics_are_32_url_safe_characters_per_conversation() {
        let a = topic("conversation-a");
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(a, topic("conversation-a"));
        assert_ne!(a, topic("conversation-b"));
    }

    #[test]
    fn a_small_notification_is_sent_whole() {
        let n = notification(Some("hi".into()));
        let json = payload(&n).expect("payload");
        assert_eq!(json, serde_json::to_vec(&n).expect("JSON"));
    }

    #[test]
    fn a_long_message_is_shortened_to_fit() {
        for text in ["x".repeat(10_000), "é".repeat(5_000), "\"".repeat(4_000)] {
            let json = payload(&notification(Some(text.clone()))).expect("payload");
            assert!(json.len() <= MAX_NOTIFICATION_JSON, "{}", json.len());
            assert!(
                json.len() > MAX_NOTIFICATION_JSON - 16,
                "not cut more than needed"
            );
            let back: Notification = serde_json::from_slice(&json).expect("valid JSON");
            let body = back.body.expect("text kept");
            assert!(body.ends_with(ELLIPSIS));
            assert!(text.starts_with(body.trim_end_matches(ELLIPSIS)));
        }
    }

    #[test]
    fn the_request_carries_the_web_push_headers() {
        let provider_key = Arc::new(VapidKey::generate().expect("generate").0);
        let (_, ua_public) = ua_key();
        let n = notification(Some("hello".into()));
        let provider = WebPushProvider::new(
            Arc::new(HttpClient::new(Duration::from_secs(5)).expect("client")),
            provider_key,
            "mailto:ops@example.com".into(),
            Duration::from_secs(3600),
        );
        let (headers, body) = provider
            .request(
                "https://push.example.com/s/1",
                &ua_public,
                &[9u8; 16],
                &n,
                1_700_000_000,
            )
            .expect("request");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
                .expect(name)
        };
        assert_eq!(get("content-encoding"), "aes128gcm");
        assert_eq!(get("content-type"), "application/octet-stream");
        assert_eq!(get("ttl"), "3600");
        assert_eq!(get("urgency"), "high");
        assert_eq!(get("topic"), topic(&n.conversation_id));
        assert!(get("authorization").starts_with("vapid t="));
        assert_eq!(
            body.len(),
            HEADER_LEN + serde_json::to_vec(&n).expect("JSON").len() + 17
        );

        assert!(matches!(
            provider.request(
                "https://push.example.com/s/1",
                &[4u8; 10],
                &[9u8; 16],
                &n,
                0
            ),
            Err(WebPushError::InvalidSubscription(_))
        ));
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let at = |status| PostResponse {
            status,
            retry_after: None,
        };
        for status in [200, 201, 202] {
            assert_eq!(
                outcome_for_response(&at(status)),
                Outcome::Delivered,
                "{status}"
            );
        }
        for status in [404, 410] {
            assert!(
                matches!(outcome_for_response(&at(status)), Outcome::Gone(_)),
                "{status}"
            );
        }
        for status in [408, 429, 500, 503] {
            assert!(
                matches!(outcome_for_response(&at(status)), Outcome::Retry(_)),
                "{status}"
            );
        }
        for status in [400, 401, 403, 413, 302] {
            assert!(
                matches!(outcome_for_response(&at(status)), Outcome::Rejected(_)),
                "{status}"
            );
        }
        assert!(matches!(
            outcome_for_http_error(&HttpError::Timeout(Duration::from_secs(10))),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            outcome_for_request_error(&WebPushError::InvalidSubscription("x")),
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            outcome_for_request_error(&WebPushError::Crypto("x")),
            Outcome::Retry(_)
        ));
    }
}

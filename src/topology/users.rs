//! The users of the programs and their least-privilege permissions: creating them through the
//! management API (`burrow topology apply --users`; AMQP cannot create users), and the salted
//! password hashes of the exported definitions file.
//!
//! A live broker gets each password in plain text and hashes it itself, with a random salt and
//! its configured scheme; only [`super::export`] writes hashes, because a definitions file must
//! not carry passwords.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::definition::UserDefinition;
use crate::management::{Management, ManagementError};

/// RabbitMQ's name of the hashing scheme of [`password_hash`].
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// The password hash RabbitMQ's `rabbit_password_hashing_sha256` checks, for the exported
/// definitions only:
/// `base64(salt ++ sha256(salt ++ password))` with a 4-byte salt.
///
/// The salt is derived from the user name, not random, so that exporting the same file twice
/// gives the same `definitions.json` (the committed file is checked for staleness). That is
/// acceptable only because the passwords in the topology file are demo passwords.
pub fn password_hash(user: &str, password: &str) -> String {
    let digest = Sha256::digest(format!("burrow-salt:{user}").as_bytes());
    hash_with_salt(&digest[..4], password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Creates (or updates) every user that is not `export_only`, with its permissions on `vhost`.
/// The broker hashes each password itself. Returns the names created.
///
/// # Errors
/// [`ManagementError`] when the API refuses (the acting user needs the `administrator` tag).
pub async fn apply(
    management: &Management,
    vhost: &str,
    users: &[UserDefinition],
) -> Result<Vec<String>, ManagementError> {
    let mut created = Vec::new();
    for user in users.iter().filter(|u| !u.export_only) {
        management
            .put_user(&user.name, user.password.expose(), &user.tags)
            .await?;
        let p = &user.permissions;
        management
            .put_permissions(vhost, &user.name, &p.configure, &p.write, &p.read)
            .await?;
        created.push(user.name.clone());
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_salt_then_sha256_of_salt_and_password() {
        let hash = hash_with_salt(&[0x90, 0x8d, 0xc6, 0x0a], "test12");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&hash)
            .expect("base64");
        assert_eq!(bytes.len(), 36);
        assert_eq!(&bytes[..4], &[0x90, 0x8d, 0xc6, 0x0a]);
        let expected = Sha256::digest([&[0x90, 0x8d, 0xc6, 0x0a][..], b"test12"].concat());
        assert_eq!(&bytes[4..], &expected[..]);
    }

    #[test]
    fn hash_is_stable_and_differs_per_user() {
        assert_eq!(password_hash("a", "pw"), password_hash("a", "pw"));
        assert_ne!(password_hash("a", "pw"), password_hash("b", "pw"));
    }
}

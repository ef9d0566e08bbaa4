//! Outgoing mail: the file outbox (`<mail.outbox>/outbox.mbox`, every mail appended in mboxrd
//! format, which mail clients open: `mutt -f var/outbox/outbox.mbox`) by default, SMTP when
//! `mail.smtp_url` is set.
//!
//! One file rather than one file per mail: creating a file per mail cost the notifications
//! service more CPU (inode allocation) than everything else it does per event, and left tens of
//! thousands of files behind. Each mail is one `write(2)` on a file opened with `O_APPEND`, so
//! the processes of one host can share the outbox without interleaving.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::settings::MailSettings;

/// The outbox file in the `mail.outbox` directory.
pub const OUTBOX_FILE: &str = "outbox.mbox";

/// One mail to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The recipient address.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The `Message-ID`, derived from the event so a receiving server can spot a resend.
    pub message_id: String,
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    /// Appends to `<outbox>/outbox.mbox`.
    Outbox(Arc<File>),
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Outbox(_) => "Mailer::Outbox",
            Self::Smtp(_) => "Mailer::Smtp",
        })
    }
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The mail cannot be built (a bad address): sending again will not help.
    #[error("cannot build the mail: {0}")]
    Invalid(String),
    /// The transport failed; a later attempt may work.
    #[error("sending failed: {0}")]
    Transport(String),
}

impl Mailer {
    /// The transport the settings name. The outbox directory is created.
    ///
    /// # Errors
    /// The outbox cannot be created or the SMTP URL is invalid.
    pub fn from_settings(settings: &MailSettings) -> anyhow::Result<Self> {
        match &settings.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "invalid mail.smtp_url {}: {}",
                            url.redacted(),
                            crate::settings::redact_url(&e.to_string())
                        )
                    })?
                    .build();
                Ok(Self::Smtp(transport))
            }
            None => {
                let path = outbox_file(&settings.outbox);
                let file = std::fs::create_dir_all(&settings.outbox)
                    .and_then(|()| File::options().create(true).append(true).open(&path))
                    .map_err(|e| anyhow::anyhow!("opening the outbox {}: {e}", path.display()))?;
                Ok(Self::Outbox(Arc::new(file)))
            }
        }
    }

    /// Sends `mail` from `from`.
    ///
    /// # Errors
    /// [`MailError`] saying whether a retry can help.
    pub async fn send(&self, from: &str, mail: &Mail) -> Result<(), MailError> {
        let message = Message::builder()
            .from(
                from.parse()
                    .map_err(|e| MailError::Invalid(format!("from {from:?}: {e}")))?,
            )
            .to(mail
                .to
                .parse()
                .map_err(|e| MailError::Invalid(format!("to {:?}: {e}", mail.to)))?)
            .subject(&mail.subject)
            .message_id(Some(mail.message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        match self {
            Self::Outbox(file) => {
                let entry = mbox_entry(from, &message.formatted());
                let file = file.clone();
                tokio::task::spawn_blocking(move || (&*file).write_all(&entry))
                    .await
                    .map_err(|e| MailError::Transport(format!("outbox writer: {e}")))?
                    .map_err(|e| MailError::Transport(format!("writing the outbox: {e}")))
            }
            Self::Smtp(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Transport(crate::settings::redact_url(&e.to_string()))),
        }
    }
}

impl Mailer {
    /// Whether the transport answers: for SMTP, a connection and `NOOP` (lettre's
    /// `test_connection`); the outbox always does.
    ///
    /// # Errors
    /// Why the SMTP server did not answer.
    pub async fn probe(&self) -> Result<(), String> {
        match self {
            Self::Outbox(_) => Ok(()),
            Self::Smtp(t) => match t.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the SMTP server did not answer NOOP".into()),
                Err(e) => Err(crate::settings::redact_url(&e.to_string())),
            },
        }
    }
}

/// The outbox file of the outbox directory `dir`.
pub fn outbox_file(dir: &Path) -> PathBuf {
    dir.join(OUTBOX_FILE)
}

/// One mboxrd entry: the `From ` separator line, the message with LF line ends and every line
/// that reads `From ` after any number of `>` quoted with one more `>`, and a blank line.
fn mbox_entry(from: &str, message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let sender = from
        .rsplit_once('<')
        .map_or(from, |(_, addr)| addr.trim_end_matches('>'))
        .trim();
    let mut out = format!(
        "From {} {}\n",
        if sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            sender
        },
        chrono::Utc::now().format("%a %b %e %H:%M:%S %Y")
    );
    for line in text.split_inclusive('\n') {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim_start_matches('>').starts_with("From ") {
            out.push('>');
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out.into_bytes()
}

/// The mails in the outbox directory `dir`, oldest first, as written (LF line ends, quoting
/// undone); none when there is no outbox yet.
///
/// # Errors
/// The outbox exists but cannot be read.
pub fn read_outbox(dir: &Path) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(outbox_file(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut mails = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("From ") {
            mails.extend(current.take());
            current = Some(String::new());
            continue;
        }
        let Some(mail) = current.as_mut() else {
            continue;
        };
        let unquoted = if line.trim_start_matches('>').starts_with("From ") {
            &line[1..]
        } else {
            line
        };
        mail.push_str(unquoted);
        mail.push('\n');
    }
    mails.extend(current);
    // Each entry ends with the blank separator line.
    for mail in &mut mails {
        if mail.ends_with("\n\n") {
            mail.pop();
        }
    }
    Ok(mails)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_entries_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let first = "Subject: one\r\n\r\nFrom here on\r\n>From quoted\r\nbye\r\n";
        let second = "Subject: two\r\n\r\nplain\r\n";
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(outbox_file(dir.path()))
            .unwrap();
        for m in [first, second] {
            file.write_all(&mbox_entry("Shop <shop@example.com>", m.as_bytes()))
                .unwrap();
        }
        let raw = std::fs::read_to_string(outbox_file(dir.path())).unwrap();
        assert!(raw.starts_with("From shop@example.com "), "{raw}");
        assert!(raw.contains("\n>From here on\n>>From quoted\n"), "{raw}");
        let mails = read_outbox(dir.path()).unwrap();
        assert_eq!(
            mails,
            vec![first.replace("\r\n", "\n"), second.replace("\r\n", "\n")]
        );
    }

    #[test]
    fn no_outbox_means_no_mails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_outbox(dir.path()).unwrap().is_empty());
    }
}

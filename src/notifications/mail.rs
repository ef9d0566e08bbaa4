//! Outgoing mail: the file outbox (one `.eml` per mail) by default, SMTP when
//! `mail.smtp_url` is set.

use lettre::message::header::ContentType;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::settings::MailSettings;

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
    /// `<outbox>/<uuid>.eml`.
    Outbox(AsyncFileTransport<Tokio1Executor>),
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
                std::fs::create_dir_all(&settings.outbox).map_err(|e| {
                    anyhow::anyhow!("creating the outbox {}: {e}", settings.outbox.display())
                })?;
                Ok(Self::Outbox(AsyncFileTransport::new(&settings.outbox)))
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
            Self::Outbox(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Transport(e.to_string())),
            Self::Smtp(t) => t
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Transport(crate::settings::redact_url(&e.to_string()))),
        }
    }
}

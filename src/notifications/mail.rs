//! Outgoing mail: the file outbox (`<mail.outbox>/outbox.mbox`, every mail appended in mboxrd
//! format, which mail clients open: `mutt -f var/outbox/outbox.mbox`) by default, SMTP when
//! `mail.smtp_url` is set.
//!
//! One file rather than one file per mail: creating a file per mail cost the notifications
//! service more CPU (inode allocation) than everything else it does per event, and left tens of
//! thousands of files behind. Each mail is one `write(2)` on a file opened with `O_APPEND`, so
//! the processes of one host can share the outbox without interleaving.
//!
//! Rotation: once `outbox.mbox` reaches `mail.outbox_max_bytes`, the writer that notices renames
//! it to `outbox.mbox.1` (shifting older ones up to `outbox.mbox.<outbox_keep>`, deleting the
//! oldest) under a lock file, and starts a new one; every other process sees before its next
//! write that the path names another file and reopens it. A mail written by another process
//! in between lands in `outbox.mbox.1`: rotated, never lost.

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

/// The file outbox of one process.
pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: std::sync::Mutex<File>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    File::options().create(true).append(true).open(path)
}

/// `<dir>/outbox.mbox.<n>`.
fn rotated_file(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{OUTBOX_FILE}.{n}"))
}

impl Outbox {
    /// Opens (and creates) the outbox in `dir`, rotated at `max_bytes` (0: never), keeping
    /// `keep` rotated files.
    ///
    /// # Errors
    /// The directory or the file cannot be created.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            keep,
            file: std::sync::Mutex::new(open_append(&outbox_file(dir))?),
        })
    }

    /// Appends one entry with one `write(2)`, rotating first when the file is full.
    ///
    /// # Errors
    /// The file cannot be written, reopened or rotated.
    pub fn append(&self, entry: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let path = outbox_file(&self.dir);
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // Another process rotated (or someone moved the file): follow the path.
        let current = std::fs::metadata(&path).ok().map(|m| m.ino());
        if current != Some(file.metadata()?.ino()) {
            *file = open_append(&path)?;
        }
        let len = file.metadata()?.len();
        if self.max_bytes > 0 && len > 0 && len + entry.len() as u64 > self.max_bytes {
            self.rotate()?;
            *file = open_append(&path)?;
        }
        (&*file).write_all(entry)
    }

    fn rotate(&self) -> std::io::Result<()> {
        let lock = self.dir.join("outbox.lock");
        if let Err(e) = File::options().write(true).create_new(true).open(&lock) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            // Another process is rotating; a lock left by a crash is removed after a minute.
            let stale = std::fs::metadata(&lock)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(60));
            if stale {
                let _ = std::fs::remove_file(&lock);
            }
            return Ok(());
        }
        let result = (|| {
            let path = outbox_file(&self.dir);
            // Rotated already by another process since this one looked.
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < self.max_bytes / 2 {
                return Ok(());
            }
            if self.keep == 0 {
                return std::fs::remove_file(&path);
            }
            let ignore_missing = |r: std::io::Result<()>| match r {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            ignore_missing(std::fs::remove_file(rotated_file(&self.dir, self.keep)))?;
            for n in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(
                    rotated_file(&self.dir, n),
                    rotated_file(&self.dir, n + 1),
                ))?;
            }
            std::fs::rename(&path, rotated_file(&self.dir, 1))
        })();
        let _ = std::fs::remove_file(&lock);
        result
    }
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    /// Appends to `<outbox>/outbox.mbox`.
    Outbox(Arc<Outbox>),
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
                let outbox = Outbox::open(
                    &settings.outbox,
                    settings.outbox_max_bytes,
                    settings.outbox_keep,
                )
                .map_err(|e| {
                    anyhow::anyhow!(
                        "opening the outbox {}: {e}",
                        outbox_file(&settings.outbox).display()
                    )
                })?;
                Ok(Self::Outbox(Arc::new(outbox)))
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
            Self::Outbox(outbox) => {
                let entry = mbox_entry(from, &message.formatted());
                // One write(2) of a few hundred bytes to the page cache, in place: a thread
                // hand-off (`spawn_blocking`) per mail cost more than the write (measured
                // with `perf record` in the benchmark's burrow-full mode).
                outbox
                    .append(&entry)
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

/// The mails in the outbox directory `dir`, rotated files included, oldest first, as written
/// (LF line ends, quoting undone); none when there is no outbox yet.
///
/// # Errors
/// The outbox exists but cannot be read.
pub fn read_outbox(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files = vec![outbox_file(dir)];
    let mut n = 1;
    while rotated_file(dir, n).exists() {
        files.push(rotated_file(dir, n));
        n += 1;
    }
    let mut mails = Vec::new();
    for file in files.iter().rev() {
        mails.extend(read_mbox(file)?);
    }
    Ok(mails)
}

fn read_mbox(path: &Path) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
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
    fn the_outbox_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1000, 2).unwrap();
        let entry = |i: usize| {
            mbox_entry(
                "shop@x",
                format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(180)).as_bytes(),
            )
        };
        for i in 0..40 {
            outbox.append(&entry(i)).unwrap();
        }
        assert!(std::fs::metadata(outbox_file(dir.path())).unwrap().len() <= 1000);
        assert!(rotated_file(dir.path(), 1).exists());
        assert!(rotated_file(dir.path(), 2).exists());
        assert!(
            !rotated_file(dir.path(), 3).exists(),
            "only 2 rotated files are kept"
        );
        let mails = read_outbox(dir.path()).unwrap();
        // The newest mails survive, in order; the oldest were rotated out.
        assert!(mails.len() < 40 && mails.len() >= 10, "{}", mails.len());
        assert!(mails.last().unwrap().starts_with("Subject: 39\n"));
        let firsts: Vec<usize> = mails
            .iter()
            .map(|m| m["Subject: ".len()..m.find('\n').unwrap()].parse().unwrap())
            .collect();
        assert!(firsts.windows(2).all(|w| w[1] == w[0] + 1), "{firsts:?}");
        // A second writer (another process) follows the rotation instead of writing to the
        // rotated file.
        let other = Outbox::open(dir.path(), 1000, 2).unwrap();
        for i in 40..50 {
            outbox.append(&entry(i)).unwrap();
        }
        other.append(&entry(50)).unwrap();
        let current = read_mbox(&outbox_file(dir.path())).unwrap();
        assert!(current.last().unwrap().starts_with("Subject: 50\n"));
    }

    #[test]
    fn no_outbox_means_no_mails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_outbox(dir.path()).unwrap().is_empty());
    }
}

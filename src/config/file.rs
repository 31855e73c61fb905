//! Reading the `--config` file with a bound: a config is a few kilobytes, so
//! anything that is not a regular file (a FIFO, /dev/zero) or is larger than
//! [`MAX_CONFIG_BYTES`] is refused before it is read, instead of growing the
//! process until the OOM killer takes it.

use std::io::Read as _;
use std::path::Path;

use super::error::ConfigError;
use super::units::format_size;

/// The largest config file read. Thousands of listeners fit in well under a
/// MiB; the cap only has to stop a runaway input.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The text of the config file at `path`, or why it cannot be used.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    read_capped(path, MAX_CONFIG_BYTES)
}

fn read_capped(path: &Path, cap: u64) -> Result<String, ConfigError> {
    read_text(path, cap, &CONFIG_FILE).map_err(|message| ConfigError {
        source_name: path.display().to_string(),
        key: String::new(),
        message,
    })
}

/// What kind of file [`read_text`] reads, for its messages.
pub(super) struct TextFile {
    /// `config file`, `users file`.
    pub noun: &'static str,
    /// What to give instead of something that is not a regular file.
    pub shape: &'static str,
    /// What to check when the file is over the cap.
    pub too_big: &'static str,
}

const CONFIG_FILE: TextFile = TextFile {
    noun: "config file",
    shape: "a regular TOML file",
    too_big: "a config is a few KiB, so check that --config names the right file",
};

/// The UTF-8 text of the regular file at `path`, at most `cap` bytes, or
/// why not (the message does not name the path: the caller's error does).
pub(super) fn read_text(path: &Path, cap: u64, kind: &TextFile) -> Result<String, String> {
    let TextFile {
        noun,
        shape,
        too_big,
    } = kind;
    let limit = format_size(cap);
    let not_regular =
        |what: &str| format!("is {what}, not a regular file; give {shape} of at most {limit}");
    // Checked before opening: opening a FIFO would block until a writer came.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {noun}: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular(file_kind(&meta)));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {noun}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {noun}: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!(
            "is larger than {limit}, the most a {noun} may be; {too_big}"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("ringfwd-config-file-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn a_file_over_the_cap_is_refused_naming_the_limit() {
        let p = temp("big", &[b'#'; 101]);
        let err = read_capped(&p, 100).expect_err("over the cap").to_string();
        assert!(err.contains("larger than 100B"), "{err}");
        assert!(err.contains(&p.display().to_string()), "{err}");
        let p = temp("fits", &[b'#'; 100]);
        assert_eq!(read_capped(&p, 100).map(|t| t.len()), Ok(100));
    }

    #[test]
    fn a_device_or_directory_is_refused_before_reading() {
        let err = read(Path::new("/dev/zero"))
            .expect_err("device")
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("character device") && err.contains("16MiB"),
            "{err}"
        );
        let err = read(Path::new("/")).expect_err("dir").to_string();
        assert!(err.contains("a directory"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_named() {
        let p = temp("latin1", b"# caf\xe9\n");
        let err = read(&p).expect_err("not utf-8").to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }
}

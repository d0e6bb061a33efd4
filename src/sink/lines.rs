//! JSON lines: one reading per line, to standard output or appended to a file.
//!
//! For dry runs and debugging. A line is written whole or not at all from the reader's view:
//! each batch is encoded into one buffer and written with `write_all`, then flushed.

use std::path::Path;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::reading::Reading;

/// Writes readings as JSON lines to any async writer.
pub struct LinesSink {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
    pub written: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LinesError {
    #[error("cannot open {path} for appending: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write readings: {0}")]
    Write(#[from] std::io::Error),
}

impl LinesSink {
    pub fn stdout() -> Self {
        Self::new(Box::new(tokio::io::stdout()))
    }

    pub async fn append_to(path: &Path) -> Result<Self, LinesError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| LinesError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self::new(Box::new(file)))
    }

    pub fn new(out: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        LinesSink {
            out,
            buf: Vec::with_capacity(64 * 1024),
            written: 0,
        }
    }

    pub async fn send(&mut self, readings: &[Reading]) -> Result<(), LinesError> {
        self.buf.clear();
        for r in readings {
            r.write_json(&mut self.buf);
            self.buf.push(b'\n');
        }
        self.out.write_all(&self.buf).await?;
        self.out.flush().await?;
        self.written += readings.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Value;
    use chrono::TimeZone;

    #[tokio::test]
    async fn appends_one_line_per_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let r = Reading {
            sensor_id: "a".into(),
            timestamp: chrono::Utc.timestamp_opt(0, 0).unwrap(),
            value: Value::from(1),
            extra: "".into(),
        };
        for _ in 0..2 {
            let mut sink = LinesSink::append_to(&path).await.unwrap();
            sink.send(&[r.clone(), r.clone()]).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert_eq!(
            text.lines().next(),
            Some(r#"{"sensor_id":"a","timestamp":"1970-01-01T00:00:00.000Z","value":1}"#)
        );
    }
}

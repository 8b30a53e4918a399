//! Chunk records: the chunks of an offline copy already made durable in the partial target.

use crate::error::JournalError;
use crate::store::{now, to_i64, to_u64, Journal};
use rusqlite::params;
use serde::Serialize;

/// A chunk copied and made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkRecord {
    /// Chunk index (guest offset / chunk size).
    pub index: u64,
    /// Guest offset in bytes.
    pub offset: u64,
    /// Guest bytes the chunk covers.
    pub len: u64,
    /// Bytes written as data (zeroes excluded).
    pub bytes: u64,
    /// Guest bytes of the chunk that block status reported as data: what progress counts
    /// (chunks recorded by a build before schema 4 count their whole `len`).
    pub data: u64,
    /// Content digest of the chunk's guest bytes (`vmshift_copy::digest::chunk_digest`).
    pub digest: [u8; 32],
    /// The run that copied it.
    pub run: u32,
}

impl Journal {
    /// Records chunks as copied and durable, all in one transaction. The caller must have
    /// `fsync`'d the target after writing them.
    ///
    /// # Errors
    /// [`JournalError`] on a database error (nothing is recorded then).
    pub fn record_chunks(&mut self, id: &str, chunks: &[ChunkRecord]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let e = |err| JournalError::sqlite(&path, err);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO chunks (job_id, idx, offset, len, bytes, digest, run, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(e)?;
            for c in chunks {
                stmt.execute(params![
                    id,
                    to_i64(c.index),
                    to_i64(c.offset),
                    to_i64(c.len),
                    to_i64(c.bytes),
                    &c.digest[..],
                    c.run,
                    to_i64(c.data)
                ])
                .map_err(e)?;
            }
        }
        tx.execute(
            "UPDATE jobs SET updated_at = ?1 WHERE id = ?2",
            params![now(), id],
        )
        .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// The chunks recorded for the job, by index.
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn chunks(&self, id: &str) -> Result<Vec<ChunkRecord>, JournalError> {
        let data = if self.chunk_data {
            "COALESCE(data, len)"
        } else {
            "len"
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT idx, offset, len, bytes, digest, run, {data} FROM chunks WHERE job_id = ?1
                 ORDER BY idx"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![id], |r| {
                let d: Vec<u8> = r.get(4)?;
                let mut digest = [0u8; 32];
                if d.len() == 32 {
                    digest.copy_from_slice(&d);
                }
                Ok(ChunkRecord {
                    index: to_u64(r.get(0)?),
                    offset: to_u64(r.get(1)?),
                    len: to_u64(r.get(2)?),
                    bytes: to_u64(r.get(3)?),
                    digest,
                    run: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                    data: to_u64(r.get(6)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Forgets every chunk of the job (the partial target is gone or not trusted).
    ///
    /// # Errors
    /// [`JournalError`] on a database error.
    pub fn clear_chunks(&self, id: &str) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM chunks WHERE job_id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn chunk(index: u64, run: u32) -> ChunkRecord {
        ChunkRecord {
            index,
            offset: index * (8 << 20),
            len: 8 << 20,
            bytes: 4 << 20,
            data: 6 << 20,
            digest: [u8::try_from(index % 256).unwrap(); 32],
            run,
        }
    }
}

//! A local folder: objects written through a `.partial` sibling renamed into place.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::*;

/// A local folder.
pub(super) struct LocalStore {
    pub(super) root: PathBuf,
}

impl LocalStore {
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn failed(&self, what: &'static str, key: &str, err: &std::io::Error) -> ObjectError {
        let location = self.location(key);
        if err.kind() == std::io::ErrorKind::NotFound {
            ObjectError::NotFound { location }
        } else {
            ObjectError::Failed { what, location, reason: err.to_string() }
        }
    }

    /// Writes through a `.partial` sibling renamed over `key` once synced, so a reader never
    /// sees half an object.
    async fn write(&self, key: &str, mut body: mpsc::Receiver<Chunk>) -> Result<u64, ObjectError> {
        use tokio::io::AsyncWriteExt as _;
        let path = self.path(key);
        let partial = partial_path(&path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|err| self.failed("create the folder", key, &err))?;
        }
        let mut file = tokio::fs::File::create(&partial).await.map_err(|err| self.failed("create", key, &err))?;
        let mut total = 0u64;
        loop {
            match body.recv().await {
                Some(Chunk::Data(chunk)) => {
                    total += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(|err| self.failed("write", key, &err))?;
                }
                Some(Chunk::End) => break,
                None => return Err(ObjectError::Interrupted { location: self.location(key) }),
            }
        }
        file.sync_all().await.map_err(|err| self.failed("sync", key, &err))?;
        drop(file);
        tokio::fs::rename(&partial, &path).await.map_err(|err| self.failed("rename", key, &err))?;
        Ok(total)
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

impl ObjectStore for LocalStore {
    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    fn upload<'a>(&'a self, key: &'a str, body: mpsc::Receiver<Chunk>) -> BoxFuture<'a, Result<u64, ObjectError>> {
        async move {
            let written = self.write(key, body).await;
            if written.is_err() {
                let _ = tokio::fs::remove_file(partial_path(&self.path(key))).await;
            }
            written
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>, _: &'a PutOptions) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            let (sender, receiver) = mpsc::channel(2);
            sender.send(Chunk::Data(Bytes::from(bytes))).await.expect("the receiver is here");
            sender.send(Chunk::End).await.expect("the receiver is here");
            self.upload(key, receiver).await.map(drop)
        }
        .boxed()
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ObjectError>> {
        async move { tokio::fs::read(self.path(key)).await.map_err(|err| self.failed("read", key, &err)) }.boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ObjectReader, ObjectError>> {
        async move {
            let file = tokio::fs::File::open(self.path(key)).await.map_err(|err| self.failed("open", key, &err))?;
            Ok(Box::new(file) as ObjectReader)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ObjectError>> {
        async move {
            match tokio::fs::remove_file(self.path(key)).await {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(self.failed("delete", key, &err)),
                _ => Ok(()),
            }
        }
        .boxed()
    }
}

//! Checkpoint directories: a directory of model files (shards) and the files beside them,
//! listed and classified by content ([`Listing`], [`Kind`]: models, key files, weights
//! deeplock cannot lock), and bound together by one record, `deeplock.checkpoint`
//! ([`seal`], [`check`]).

pub(crate) mod directory;
mod record;
mod sniff;
mod walk;

pub use record::{check, check_indexes, is_index, seal, Contents, RECORD_NAME};
pub use sniff::Kind;
pub use walk::{Entry, Listing, Skip};

//! Stage 4: the pinned upstream files. For now, the lock that says which Kubernetes
//! versions a cluster may name; downloading and caching build on it.

pub mod lock;

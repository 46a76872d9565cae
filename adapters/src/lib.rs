//! Remote provider adapters (E2B, Daytona, Modal, Morph, Kubernetes).
//!
//! Not implemented yet: this crate is the reserved home of the providers' API clients, which
//! arrive with their own issue. Until then the router routes to remote candidates and the CLI
//! reports them as not executable. Like `runtime`, this crate must never route or train.

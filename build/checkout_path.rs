//! Build script shared by the crates whose code or tests use `env!("CARGO_MANIFEST_DIR")`
//! (`build = "../build/checkout_path.rs"` in their Cargo.toml): rebuilds them when the
//! checkout moves. Cargo shares one build of a workspace member between checkouts that use
//! the same target directory (as CI's clone and a developer's checkout do with
//! `CARGO_TARGET_DIR=$HOME/.cache/sandstorm/target`) and does not rebuild a crate whose
//! files are older than that build, so a binary built from one checkout could otherwise look
//! for test data, or point `sandstorm policy new` at the guest SDK, in the other.

//!
//! `CARGO_MANIFEST_DIR` is set by Cargo for the build script, not in Cargo's own
//! environment, so watching it never sees a change; `.cargo/config.toml` sets
//! `SANDSTORM_CHECKOUT` to the checkout's absolute path (`relative = true`), which Cargo
//! does compare between builds.

fn main() {
    println!("cargo:rerun-if-env-changed=SANDSTORM_CHECKOUT");
}

//! Generates the Rust code of Modal's gRPC API subset (`proto/modal/api.proto`) with protox (a
//! pure-Rust protobuf compiler, so no `protoc` install) and tonic-prost-build, twice:
//!
//! - `$OUT_DIR/modal-client/modal.client.rs`: messages and the client, used by `src/modal.rs`;
//! - `$OUT_DIR/modal-server/modal.client.rs`: messages and the server trait, used only by the
//!   contract tests' Modal test double (`tests/contract/doubles/modal.rs`).

use std::path::PathBuf;

const PROTO: &str = "proto/modal/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for (dir, client, server) in [("modal-client", true, false), ("modal-server", false, true)] {
        let out = out_dir.join(dir);
        std::fs::create_dir_all(&out)?;
        let descriptors = protox::compile([PROTO], ["proto"])?;
        tonic_prost_build::configure()
            .build_client(client)
            .build_server(server)
            .build_transport(false)
            .out_dir(&out)
            .compile_fds(descriptors)?;
    }
    Ok(())
}

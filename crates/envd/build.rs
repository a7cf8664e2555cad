//! Generates the envd message types and service traits from the checked-in descriptor set
//! (`proto/envd.fds`), so building needs no `protoc`. `scripts/regen-envd-proto` rebuilds the
//! descriptor set after a `.proto` change.

fn main() {
    println!("cargo:rerun-if-changed=proto/envd.fds");
    connectrpc_build::Config::new()
        .descriptor_set("proto/envd.fds")
        .files(&["process/process.proto", "filesystem/filesystem.proto"])
        .include_file("_connectrpc.rs")
        .compile()
        .expect("generate envd code from proto/envd.fds");
}

//! Compiles the gRPC definitions with protox (pure Rust, no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/csi_provider.proto",
        "proto/keyservice.proto",
        "proto/kms_v2.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Messages that carry key material get a redacting Debug written by hand.
        .skip_debug([
            ".v1alpha1.MountResponse",
            ".v1alpha1.File",
            ".keyward.keyservice.v1.FetchRequest",
            ".keyward.keyservice.v1.FetchResponse",
            ".keyward.keyservice.v1.KeyResult",
            ".keyward.keyservice.v1.ServedVersion",
            ".v1alpha1.MountRequest",
            ".v2.DecryptResponse",
            ".v2.EncryptRequest",
        ])
        // Zeroizing owners back these buffers: see docs/provider.md.
        .bytes(".v1alpha1.File.contents")
        .bytes(".keyward.keyservice.v1.ServedVersion.material")
        .bytes(".v2.DecryptResponse.plaintext")
        .compile_fds(fds)?;
    Ok(())
}

# Multi-stage build: compile in the Rust image, run in a small non-root distroless image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
RUN cargo build --release --bin keyward && strip target/release/keyward

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keyward"]

//! Build script: rebuilds the crate when a migration is added or changed, so `sqlx::migrate!`
//! never embeds a stale set from a warm `target/`.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

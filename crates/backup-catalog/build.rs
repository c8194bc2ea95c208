//! Rebuild when a migration is added: `sqlx::migrate!` embeds the directory contents, but
//! cargo only tracks files it was told about.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

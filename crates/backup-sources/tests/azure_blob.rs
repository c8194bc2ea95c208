//! The Blob Storage client against a real Azurite (started per test on a free port).
#![cfg(feature = "azure")]

use backup_sources::azure::blob::{
    BlobClient, BlobCredential, BlobError, Metadata, PutBlobOptions,
};
use backup_sources::Secret;
use backup_testing::servers::{skip_azure_tests, Azurite, AZURITE_ACCOUNT, AZURITE_KEY};

fn client(azurite: &Azurite) -> BlobClient {
    BlobClient::new(
        &azurite.endpoint(),
        AZURITE_ACCOUNT,
        BlobCredential::SharedKey(Secret::new(AZURITE_KEY)),
    )
    .expect("a client of Azurite")
}

async fn read_all(client: &BlobClient, container: &str, name: &str) -> (Vec<u8>, Metadata) {
    let mut download = client.get_blob(container, name).await.expect("get blob");
    let mut content = Vec::new();
    while let Some(chunk) = download.next_chunk().await.expect("a chunk") {
        content.extend_from_slice(&chunk);
    }
    (content, download.properties.metadata.clone())
}

#[tokio::test]
async fn blobs_round_trip_with_blocks_metadata_and_content_type() {
    if skip_azure_tests() {
        return;
    }
    let azurite = Azurite::start();
    // Small blocks so a modest blob takes the block path (several blocks and a block list).
    let client = client(&azurite).with_block_size(64 * 1024).unwrap();
    let mut meta = Metadata::new();
    meta.insert("team".into(), "billing".into());
    assert!(client.create_container("invoices", &meta).await.unwrap());
    assert!(!client.create_container("invoices", &meta).await.unwrap());

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut blob_meta = Metadata::new();
    blob_meta.insert("origin".into(), "erp".into());
    let options = PutBlobOptions {
        content_type: Some("application/pdf".into()),
        metadata: blob_meta.clone(),
    };
    let out = client
        .put_blob("invoices", "2026/11/big file.pdf", &big[..], &options)
        .await
        .unwrap();
    assert_eq!(out.size, big.len() as u64);
    assert_eq!(out.blocks, 5);
    let small = PutBlobOptions::default();
    client
        .put_blob("invoices", "note.txt", &b"hello"[..], &small)
        .await
        .unwrap();
    client
        .put_blob("invoices", "empty", &b""[..], &small)
        .await
        .unwrap();

    let containers = client.list_containers(None).await.unwrap();
    let invoices = containers.iter().find(|c| c.name == "invoices").unwrap();
    assert_eq!(invoices.metadata, meta);
    let blobs = client.list_blobs("invoices", None).await.unwrap();
    let names: Vec<&str> = blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["2026/11/big file.pdf", "empty", "note.txt"]);
    let big_info = &blobs[0];
    assert_eq!(big_info.size, big.len() as u64);
    assert_eq!(big_info.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(big_info.metadata, blob_meta);
    assert_eq!(
        big_info.content_md5.as_deref(),
        Some(out.content_md5.as_str())
    );

    let (content, got_meta) = read_all(&client, "invoices", "2026/11/big file.pdf").await;
    assert_eq!(content, big);
    assert_eq!(got_meta, blob_meta);
    assert_eq!(read_all(&client, "invoices", "empty").await.0, b"");
    assert_eq!(
        client
            .list_blobs("invoices", Some("2026/"))
            .await
            .unwrap()
            .len(),
        1
    );

    assert!(client.delete_blob("invoices", "note.txt").await.unwrap());
    assert!(!client.delete_blob("invoices", "note.txt").await.unwrap());
    let missing = client.get_blob("invoices", "note.txt").await.unwrap_err();
    assert!(matches!(missing, BlobError::NotFound { .. }), "{missing}");
}

#[tokio::test]
async fn a_wrong_account_key_is_named_and_never_printed() {
    if skip_azure_tests() {
        return;
    }
    let azurite = Azurite::start();
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let client = BlobClient::new(
        &azurite.endpoint(),
        AZURITE_ACCOUNT,
        BlobCredential::SharedKey(Secret::new(wrong)),
    )
    .unwrap();
    let err = client.list_containers(None).await.unwrap_err();
    assert!(
        matches!(err, BlobError::AccountKeyRejected { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?} {client:?}");
    assert!(text.contains("account key"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = BlobClient::new(
        &format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        AZURITE_ACCOUNT,
        BlobCredential::SharedKey(Secret::new(AZURITE_KEY)),
    )
    .unwrap();
    let err = client.list_containers(None).await.unwrap_err();
    assert!(matches!(err, BlobError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

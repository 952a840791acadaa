"""The storage stage: the object store (a folder or S3), collection manifests, face records in Parquet,
the writer lease and S3 image reads. Every object key passes `object_store.check_key`."""

"""Object storage for reports and artifacts: S3 or any S3-compatible endpoint (see ``onevision.storage.s3``)."""

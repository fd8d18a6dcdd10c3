-- Multipart uploads (issue 13): an upload larger than `blob_part_bytes` is offered in parts of
-- `part_size` bytes. On S3 `multipart_id` is the store's multipart upload id (aborted when the
-- upload ends without using it); on the local store the parts are files under
-- `parts/{blob_id}/`.
ALTER TABLE blob_uploads ADD COLUMN part_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE blob_uploads ADD COLUMN multipart_id TEXT;

-- Raw messages are stored compressed with zstd when that makes them smaller (raw_zstd = 1):
-- mail text takes about a third of its size. Rows stored before keep their bytes as they are.
ALTER TABLE emails ADD COLUMN raw_zstd INTEGER NOT NULL DEFAULT 0;

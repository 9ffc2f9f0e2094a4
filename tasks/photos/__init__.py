"""The photos: sources (folder, archive, URL), decoding, the per-photo cache, exclusions, shard format."""

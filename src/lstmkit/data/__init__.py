"""Data: reading corpora, series, pairs and audio; vocabularies; batching."""

"""Evidence bundles: a zip anyone can verify offline with the log's key, and its verifier.

``export.write_bundle`` streams selected ledger entries, their proofs against one checkpoint, the
consistency proofs from earlier checkpoints, the opened commitments, the signed images and the
keys into a zip; ``verify.verify_bundle`` checks such a zip with nothing but the zip and the
expected log key. ``layout`` names the files both sides agree on.
"""

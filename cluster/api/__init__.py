"""The API stage, the lowest but errors: the gallery.v1 contract's limits (`limits`), the conversions between
its messages and the domain's values (`convert`), and command lines made from entry functions (`flags`).
Light to import (no Ray, FAISS or torch), so the servicers, the gateway, the client and the jobs all use it."""

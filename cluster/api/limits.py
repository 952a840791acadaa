"""Limits of the gallery.v1 contract: one definition each, read by the servicers, the gateway, the jobs and
the client. The proto's comments state the same numbers and the status code a request over each one gets."""

# Images (Rekognition's limits): inline bytes in a request, and objects read from S3.
MAX_IMAGE_BYTES = 5 * 2**20
MAX_S3_IMAGE_BYTES = 15 * 2**20

# A gRPC message, either way: 10,000 faces of 512 float32 with metadata fit; larger requests get RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 64 * 2**20

"""The API stage: limits of the gallery.v1 contract, shared by the servicers, the gateway and the client."""

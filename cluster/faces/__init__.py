"""Face pipeline: decode → detect (YuNet) → align → embed (SFace by default, or FaceNet; PyTorch).

Plain classes, no Ray and no gRPC: the serving layer wraps `FacePipeline` in an
actor pool and maps `InvalidImageError` to INVALID_ARGUMENT, and `ImageTooLargeError` (one kind of it)
to RESOURCE_EXHAUSTED.

Example:
    >>> from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline, decode_image
    >>> pipe = FacePipeline(FaceDetector(), FaceNetEmbedder())
    >>> faces = pipe.analyze(decode_image(open("group.jpg", "rb").read()))
    >>> float(faces[0].embedding @ faces[1].embedding) > FaceNetEmbedder.default_threshold
    False
"""
from .align import ARCFACE_TEMPLATE_112, FACENET_TEMPLATE_160, align_face, similarity_transform
from .detect import DetectedFace, FaceDetector
from .embed import Embedder, TorchEmbedder, TorchScriptEmbedder, default_device
from .facenet import FaceNetEmbedder, load_facenet
from .image import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_S3_IMAGE_BYTES,
    ImageTooLargeError,
    InvalidImageError,
    decode_image,
)
from .models import DEFAULT_MODEL, UnknownModelError, describe_model, embedder_for, model_names
from .pipeline import Face, FacePipeline
from .quality import QUALITY_FILTER_THRESHOLDS, face_quality, quality_filter_threshold
from .sface import SFaceEmbedder, load_sface

__all__ = [
    "DEFAULT_MODEL", "SFaceEmbedder", "UnknownModelError", "describe_model", "embedder_for", "load_sface",
    "model_names", "ARCFACE_TEMPLATE_112", "FACENET_TEMPLATE_160", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS",
    "MAX_S3_IMAGE_BYTES", "QUALITY_FILTER_THRESHOLDS", "DetectedFace", "Embedder", "Face",
    "FaceDetector", "FaceNetEmbedder", "FacePipeline", "ImageTooLargeError", "InvalidImageError", "TorchEmbedder",
    "TorchScriptEmbedder", "align_face", "decode_image", "default_device", "face_quality",
    "load_facenet", "quality_filter_threshold", "similarity_transform",
]

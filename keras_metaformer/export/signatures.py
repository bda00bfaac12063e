"""The names of the exported signatures and their tensors.

TF Serving requests, the warm-up records and the tests refer to them. A
module of its own, so that `saved_model` (which writes the signatures) and
`serving` (which writes requests to them) both import it, not each other.
"""

SERVING_DEFAULT = "serving_default"
CLASSIFY = "classify_images"
IMAGES = "images"
IMAGE_BYTES = "image_bytes"
PROBABILITIES = "probabilities"
CLASSIFY_OUTPUTS = ("class_ids", "class_names", "scores")

from bcclassify.serving.classifier import load_model


def test_tiny_store_has_both_models(tiny_store):
    hybrid = load_model("tiny-hybrid")
    cnn = load_model("tiny-cnn")
    assert hybrid.image_size == 107 and cnn.image_size == 32

"""The portable graph of a registered version, which ONNX Runtime runs with no rayline and no Python: the
preprocessing, the model and the decoding as one torch module, exported to ONNX. Used by `rayline export`
(rayline.export, which also checks it against the Serve replica's answers) and by Serve's onnxruntime replicas.

    graph.py     the torch module exported: raw values -> preprocessing -> model -> softmax / unscaled value
    onnx.py      torch's exporter (dynamo, else TorchScript), string lookups, class names, int8 quantization
    contract.py  the inputs and outputs an edge caller sees, as JSON and as a feed built from a table
    rows.py      rows to check a graph on (the held-out split found again in the source, or synthetic rows)
"""

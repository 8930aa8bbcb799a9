"""Stands in for the postprocessing model.py of TensorRT-LLM's inflight_batcher_llm."""


class TritonPythonModel:
    def execute(self, requests):
        raise NotImplementedError

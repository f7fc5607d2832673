"""Stand-in of backend/text_processing/classic_engine.py and t5_engine.py: at construction the CLIP
token embedding is wrapped for textual inversion (the original kept as `.wrapped`, its weight
Parameter registered on the wrapper too); each encode converts the token and position embeddings
(T5: `shared`) to fp32 with Module.to, after they were loaded in the encoder's storage dtype."""
import torch


class CLIPEmbeddingForTextualInversion(torch.nn.Module):
    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.weight = self.wrapped.weight


class ClassicTextProcessingEngine:
    def __init__(self, text_encoder):
        self.text_encoder = text_encoder
        emb = text_encoder.transformer.text_model.embeddings
        emb.token_embedding = CLIPEmbeddingForTextualInversion(emb.token_embedding)

    def encode_with_transformers(self):
        emb = self.text_encoder.transformer.text_model.embeddings
        emb.position_embedding = emb.position_embedding.to(dtype=torch.float32)
        emb.token_embedding = emb.token_embedding.to(dtype=torch.float32)


class T5TextProcessingEngine:
    def __init__(self, text_encoder):
        self.text_encoder = text_encoder.transformer

    def encode_with_transformers(self):
        self.text_encoder.shared.to(dtype=torch.float32)

"""Copied by `distill export` into each classification folder: the distill student's classifier
for one task, loaded by transformers with ``trust_remote_code=True`` (offline; it imports only
torch and transformers).

The encoder (any transformers encoder: the architecture is ``config.distill_encoder_type``, its
settings the rest of the config) has its states averaged over real tokens (mean pooling, not the
CLS pooler) and read by one linear layer; with private sharing, the mean-pooled states of a
one-layer private encoder over the same embeddings (a random pre-norm layer, or a copy of an
encoder layer: then a one-layer encoder of the same architecture, with its own copy of the
embeddings) are concatenated first. ``mean_pool`` and ``PrivateEncoder`` repeat
distill/student/sharing/ so the folder needs no distill installed;
the export's own check (same probabilities as the student) holds them to it.
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

OWN_FIELDS = ("model_type", "architectures", "auto_map", "transformers_version")
"""Config fields that describe the folder's model rather than its encoder."""


class MeanPoolConfig(PretrainedConfig):
    """The encoder's own config fields, flat, plus the distill_* fields this file reads."""

    model_type = "distill_mean_pool"


def encoder_config(config: MeanPoolConfig) -> PretrainedConfig:
    """The encoder's config, rebuilt from the flat fields of ``config``."""
    fields = {
        k: v for k, v in config.to_dict().items() if k not in OWN_FIELDS and not k.startswith("distill_")
    }
    return AutoConfig.for_model(config.distill_encoder_type, **fields)


def mean_pool(states, attention_mask):
    """(batch, seq, hidden) -> (batch, hidden), averaging real tokens only."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class PrivateEncoder(nn.Module):
    """One pre-norm transformer layer over the encoder's embeddings (distill/student/sharing.py)."""

    def __init__(self, hidden, heads, feedforward, dropout):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, feedforward, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embedded, attention_mask):
        return self.norm(self.layer(embedded, src_key_padding_mask=attention_mask == 0))


class MeanPoolForSequenceClassification(PreTrainedModel):
    config_class = MeanPoolConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        # A PreTrainedModel of its own: transformers initialises its buffers with its own rules.
        self.encoder = AutoModel.from_config(encoder_config(config))
        private = config.distill_private
        self.private = None
        if private and "layers" not in private:  # a random pre-norm layer
            self.private = PrivateEncoder(
                config.hidden_size, config.num_attention_heads, private["feedforward"], private["dropout"]
            )
        elif private:  # a copied layer: a one-layer encoder of the encoder's own architecture
            one_layer = encoder_config(config)
            one_layer.num_hidden_layers = private["layers"]
            self.private = AutoModel.from_config(one_layer, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.distill_dropout)
        width = config.hidden_size * (2 if private else 1)
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = mean_pool(states, attention_mask)
        if isinstance(self.private, PrivateEncoder):
            embedded = self.encoder.embeddings(input_ids=input_ids, **extra)
            private_states = self.private(embedded, attention_mask)
            pooled = torch.cat([pooled, mean_pool(private_states, attention_mask)], -1)
        elif self.private is not None:
            private_states = self.private(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state
            pooled = torch.cat([pooled, mean_pool(private_states, attention_mask)], -1)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

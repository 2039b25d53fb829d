"""diffusers pipelines of the toolkit: multi-step teachers and the one-step generators SFD produces."""

from .class_conditional import ClassConditionalPipeline, OneStepClassPipeline
from .text_to_image import OneStepTextPipeline
from .text_to_image_xl import OneStepTextXLPipeline
from .flow import OneStepFluxPipeline, OneStepSD3Pipeline

__all__ = ["ClassConditionalPipeline", "OneStepClassPipeline", "OneStepTextPipeline", "OneStepTextXLPipeline", "OneStepSD3Pipeline",
           "OneStepFluxPipeline"]

"""diffusers pipelines of the toolkit: multi-step teachers and the one-step generators SFD produces."""

from sfd.pipelines.class_conditional import ClassConditionalPipeline, OneStepClassPipeline
from sfd.pipelines.text_to_image import OneStepTextPipeline
from sfd.pipelines.text_to_image_xl import OneStepTextXLPipeline
from sfd.pipelines.flow import OneStepFluxPipeline, OneStepSD3Pipeline

__all__ = ["ClassConditionalPipeline", "OneStepClassPipeline", "OneStepTextPipeline", "OneStepTextXLPipeline", "OneStepSD3Pipeline",
           "OneStepFluxPipeline"]

"""tb_hf: TempBalance for the Hugging Face fine-tuning stack."""

from .spectral import LayerSpectrum, PowerLawFit, analyze, esd, farms_esd, fit_power_law

__version__ = "0.1.0"

__all__ = ["LayerSpectrum", "PowerLawFit", "analyze", "esd", "farms_esd", "fit_power_law"]

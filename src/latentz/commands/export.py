"""`latentz export`: ONNX encoder/decoder and the codec's entropy model for an existing bundle."""

from __future__ import annotations

import typer

from latentz.commands import user_command


def register(app: typer.Typer) -> None:
    @app.command("export")
    @user_command
    def export_command(
        model: str = typer.Argument(..., help="Bundle name or folder."),
    ) -> None:
        """Write encoder.onnx, decoder.onnx and entropy_model.json into a bundle (training does this too).

        The entropy model is refitted on the run's own training split; the ONNX files are checked
        against torch on validation images and the differences recorded in card.json.
        """
        from latentz.export import export_bundle

        fields = export_bundle(model)
        onnx, entropy = fields["onnx"], fields["entropy_model"]
        typer.echo(
            f"exported {model}: ONNX opset {onnx['opset']}, max |torch - onnx| encoder "
            f"{onnx['encoder_mean_max_abs_diff']:.1e}, decoder {onnx['decoder_max_abs_diff']:.1e} on "
            f"{onnx['parity_images']} images; entropy model {entropy['id']:02x} fitted on "
            f"{entropy['n_images']} training images"
        )

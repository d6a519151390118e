"""The wheel build puts the repository's one grammar (grammar/attn.lark) inside the package.

grammar/ sits at the top of the repository so that editors, highlighters and the docs read the
same file as the parser; a package's data must live under the package, so build_py copies it to
attncc/grammar/ in the build tree. A source checkout or an editable install reads grammar/
directly (attncc.frontend.parse.grammar_path).
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

GRAMMAR_FILES = ["attn.lark", "attn.tmLanguage.json"]


class BuildPyWithGrammar(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads grammar/ in place
            return
        target = Path(self.build_lib) / "attncc" / "grammar"
        target.mkdir(parents=True, exist_ok=True)
        for name in GRAMMAR_FILES:
            self.copy_file(str(Path("grammar") / name), str(target / name))

    def get_outputs(self, include_bytecode=1):
        grammar = [str(Path(self.build_lib) / "attncc" / "grammar" / name) for name in GRAMMAR_FILES]
        return super().get_outputs(include_bytecode) + ([] if self.editable_mode else grammar)


setup(cmdclass={"build_py": BuildPyWithGrammar})

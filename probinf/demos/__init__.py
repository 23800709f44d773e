"""The steps of ``probinf demo``, one module per part of the library.

Tooling, not library: each module holds one step function ``step(key, quick, progress=None)
-> DemoStep`` registered in `probinf.demo.STEPS` (which imports them lazily, so ``probinf
demo --only vi`` never imports `circuits`). The modules of the sibling packages (`flows`,
`circuits`, `amortized`) import them inside their step functions only, so importing this
package imports none of them. Data a step ships with lives in ``probinf/demos/data/``.
"""

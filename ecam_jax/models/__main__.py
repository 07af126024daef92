"""python -m ecam_jax.models [NAME]: the registered networks and their variants, or one
network's options (default, allowed values, how a resume may change it, what it does) as
the Markdown table its docs page shows."""

import sys

from ecam_jax.models import options, registry


def main(argv: list[str]) -> int:
  if len(argv) > 2 or (len(argv) == 2 and argv[1] not in registry.NETWORKS):
    print(f'usage: python -m ecam_jax.models [NAME]; NAME one of {sorted(registry.NETWORKS)}')
    return 2
  if len(argv) == 2:
    print(options.markdown_table(registry.NETWORKS[argv[1]].options))
    return 0
  for name, entry in registry.NETWORKS.items():
    print(f'{name}: variants {", ".join(entry.presets)}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))

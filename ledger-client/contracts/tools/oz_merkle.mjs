// Reference roots and proofs from OpenZeppelin's StandardMerkleTree, for the C++ tests.
// Usage: node tools/oz_merkle.mjs IN.json OUT.json
//   IN:  {"rows": [["epoch", "0xtrancheId", "0xaccount", "score", "amount"], ...]}
//   OUT: {"root": "0x..", "leaves": ["0x..", ...], "proofs": [["0x..", ...], ...]}  (row order)
// Output goes to a file: piped output of node can be cut short when it exits.
import { StandardMerkleTree } from '@openzeppelin/merkle-tree';
import { readFileSync, writeFileSync } from 'node:fs';

const [input, output] = process.argv.slice(2);
const { rows } = JSON.parse(readFileSync(input, 'utf8'));
const tree = StandardMerkleTree.of(rows, ['uint64', 'bytes32', 'address', 'uint256', 'uint256']);
const leaves = rows.map((_, i) => tree.leafHash(rows[i]));
const proofs = rows.map((_, i) => tree.getProof(i));
writeFileSync(output, JSON.stringify({ root: tree.root, leaves, proofs }));

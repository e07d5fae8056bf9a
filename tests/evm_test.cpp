// The EVM backend against a real node: anvil (from npm) started per test on a free port, the
// AttributionLedger contract compiled by forge. Transactions are signed here (secp256k1) and
// sent as raw EIP-1559 or legacy EIP-155 transactions.
#include "ledger_fixtures.hpp"

#include <attrace/error.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/registry.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

namespace al = attrace::ledger;
using attrace::test::Anvil;
using attrace::test::refusal_of;
using attrace::test::TempDir;
using attrace::test::write_report;

namespace {

al::EvmOptions options_for(const Anvil& a) {
  al::EvmOptions o;
  o.rpc_url = a.url();
  o.chain_id = 31337;
  o.rpc_timeout = std::chrono::milliseconds(5000);
  o.receipt_timeout = std::chrono::milliseconds(20000);
  return o;
}

// Waits until the node answers (anvil needs a moment after exec).
void wait_ready(const Anvil& a) {
  al::RpcClient c(a.url(), std::chrono::milliseconds(500));
  for (int i = 0; i < 100; ++i) {
    try {
      c.call("eth_chainId", nlohmann::json::array());
      return;
    } catch (const al::RpcError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  FAIL() << "anvil did not start at " << a.url();
}

void advance(al::EvmLedger& l, int64_t seconds) {
  l.rpc().call("evm_increaseTime", {seconds});
  l.rpc().call("evm_mine", nlohmann::json::array());
}

size_t commit_events(al::EvmLedger& l, const al::Address& contract, uint64_t epoch) {
  const auto topic = al::to_hex(al::keccak256("EpochCommitted(uint64,bytes32,bytes32,uint256,uint64,string)"));
  const auto logs = l.rpc().call("eth_getLogs", {{{"address", al::to_hex(contract)},
                                                  {"fromBlock", "0x0"},
                                                  {"toBlock", "latest"},
                                                  {"topics", {topic, al::to_hex(al::to_word(epoch))}}}});
  return logs.size();
}

std::vector<std::tuple<std::string, std::string, double>> random_tranches(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::tuple<std::string, std::string, double>> t;
  for (int i = 0; i < n; ++i) {
    char acct[43];
    std::snprintf(acct, sizeof acct, "0x%016llx%016llx%08x", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng()), static_cast<unsigned>(rng()));
    t.emplace_back("tranche-" + std::to_string(i), acct, static_cast<double>(rng() % 1000) / 1000.0);
  }
  return t;
}

class Evm : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(attrace::test::contract_artifact())) << "contract artifact missing: " << attrace::test::contract_artifact();
    anvil_ = std::make_unique<Anvil>();
    wait_ready(*anvil_);
    ledger_ = std::make_unique<al::EvmLedger>(options_for(*anvil_), al::PrivateKey::from_hex(attrace::test::kAnvilKey0));
    arbiter_ = al::PrivateKey::from_hex(attrace::test::kAnvilKey1).address();
    contract_ = ledger_->deploy(attrace::test::contract_artifact(), arbiter_, 3600);
  }
  al::EvmLedger arbiter_ledger() {
    auto o = options_for(*anvil_);
    o.contract = contract_;
    return al::EvmLedger(o, al::PrivateKey::from_hex(attrace::test::kAnvilKey1));
  }
  TempDir dir_;
  std::unique_ptr<Anvil> anvil_;
  std::unique_ptr<al::EvmLedger> ledger_;
  al::Address arbiter_{}, contract_{};
};

TEST(EvmSigning, Eip155ExampleFromTheEip) {
  // The worked example of EIP-155: nonce 9, gas price 20 gwei, gas 21000, to 0x3535...35,
  // value 10^18, chain id 1, key 0x4646...46.
  al::TxRequest tx;
  tx.legacy = true;
  tx.chain_id = 1;
  tx.nonce = 9;
  tx.gas_price = al::U256("20000000000");
  tx.gas = 21000;
  tx.to = al::address_from_hex("0x3535353535353535353535353535353535353535", "to");
  tx.value = al::U256("1000000000000000000");
  const auto signed_tx = al::sign_transaction(tx, al::PrivateKey::from_hex("0x4646464646464646464646464646464646464646464646464646464646464646"));
  EXPECT_EQ(al::to_hex(signed_tx),
            "0xf86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe5"
            "37567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83");
}

TEST_F(Evm, CommitWaitClaimEveryLeafBalancesAddUp) {
  write_report(dir_ / "r", random_tranches(12, 5));
  const al::U256 pool("1000000000000000000000");  // 1000 units of an 18-decimal native token
  const auto c = al::build_epoch(dir_ / "r", 1, pool);
  const auto r = ledger_->commit(c, "file:///epoch-1.json");
  EXPECT_FALSE(r.already_committed);
  EXPECT_EQ(r.status.state, "committed");
  EXPECT_EQ(r.status.root, c.root);
  EXPECT_EQ(ledger_->balance(contract_), pool);
  EXPECT_TRUE(ledger_->commit(c, "file:///epoch-1.json").already_committed);
  EXPECT_EQ(commit_events(*ledger_, contract_, 1), 1u);

  EXPECT_EQ(refusal_of([&] { ledger_->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::not_final);
  advance(*ledger_, 3600);
  // Tampered claims: changed amount, changed account, wrong sibling.
  auto more = c.leaves[0].leaf;
  more.amount += 1;
  EXPECT_EQ(refusal_of([&] { ledger_->claim(more, c.proof(0)); }), al::Refusal::invalid_proof);
  auto moved = c.leaves[0].leaf;
  moved.account = c.leaves[1].leaf.account;
  EXPECT_EQ(refusal_of([&] { ledger_->claim(moved, c.proof(0)); }), al::Refusal::invalid_proof);
  auto wrong = c.proof(0);
  wrong.back()[0] ^= 0x80;
  EXPECT_EQ(refusal_of([&] { ledger_->claim(c.leaves[0].leaf, wrong); }), al::Refusal::invalid_proof);

  al::U256 paid = 0;
  for (size_t i = 0; i < c.leaves.size(); ++i) {
    const al::U256 before = ledger_->balance(c.leaves[i].leaf.account);
    ledger_->claim(c.leaves[i].leaf, c.proof(i));  // accepted: every proof verifies on chain
    EXPECT_EQ(ledger_->balance(c.leaves[i].leaf.account), before + c.leaves[i].leaf.amount);
    EXPECT_TRUE(ledger_->claimed(c.leaves[i].leaf));
    paid += c.leaves[i].leaf.amount;
  }
  EXPECT_EQ(paid, pool);
  EXPECT_EQ(ledger_->balance(contract_), al::U256(0));
  EXPECT_EQ(ledger_->status(1).claimed, pool);
  EXPECT_EQ(refusal_of([&] { ledger_->claim(c.leaves[3].leaf, c.proof(3)); }), al::Refusal::already_claimed);
}

TEST_F(Evm, ContractAcceptsEveryProofOfA1025LeafTreeAndRejectsTampered) {
  write_report(dir_ / "r", random_tranches(1025, 77));
  const auto c = al::build_epoch(dir_ / "r", 11, al::U256("1234567891234567891234"));
  ledger_->commit(c, "");
  advance(*ledger_, 3600);
  for (size_t i = 0; i < c.leaves.size(); ++i) {
    const auto proof = c.proof(i);
    ASSERT_EQ(proof.size() >= 10, true);
    ASSERT_NO_THROW(ledger_->check_claim(c.leaves[i].leaf, proof)) << "leaf " << i;
    if (i % 97 == 0) {  // a sample of tampered variants, each must be refused
      auto more = c.leaves[i].leaf;
      more.amount += 1;
      EXPECT_EQ(refusal_of([&] { ledger_->check_claim(more, proof); }), al::Refusal::invalid_proof);
      auto moved = c.leaves[i].leaf;
      moved.account = c.leaves[(i + 1) % c.leaves.size()].leaf.account;
      EXPECT_EQ(refusal_of([&] { ledger_->check_claim(moved, proof); }), al::Refusal::invalid_proof);
      auto wrong = proof;
      wrong[i % wrong.size()][31] ^= 1;
      EXPECT_EQ(refusal_of([&] { ledger_->check_claim(c.leaves[i].leaf, wrong); }), al::Refusal::invalid_proof);
    }
  }
}

TEST_F(Evm, DisputedEpochCannotBeClaimedArbiterCancels) {
  write_report(dir_ / "r", random_tranches(3, 9));
  const auto c = al::build_epoch(dir_ / "r", 2, al::U256(1000));
  ledger_->commit(c, "");
  ledger_->dispute(2, al::keccak256("recomputation differs"));
  EXPECT_EQ(ledger_->status(2).state, "disputed");
  advance(*ledger_, 7200);
  EXPECT_EQ(refusal_of([&] { ledger_->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::disputed);
  EXPECT_EQ(refusal_of([&] { ledger_->resolve(2, true); }), al::Refusal::unauthorized);
  auto arbiter = arbiter_ledger();
  arbiter.resolve(2, true);
  EXPECT_EQ(ledger_->status(2).state, "cancelled");
  EXPECT_EQ(refusal_of([&] { ledger_->claim(c.leaves[0].leaf, c.proof(0)); }), al::Refusal::cancelled);
  const auto again = al::build_epoch(dir_ / "r", 2, al::U256(999));
  EXPECT_FALSE(ledger_->commit(again, "").already_committed);  // cancelled epochs may be re-committed
  EXPECT_EQ(ledger_->status(2).total_reward, al::U256(999));
}

TEST_F(Evm, Eip712ReceiptSignedInCppRecoversOnChain) {
  const auto signer = al::PrivateKey::from_hex("0x" + std::string(63, '0') + "7");
  const auto root = al::keccak256("root"), mh = al::keccak256("manifest");
  const auto digest = al::receipt_digest(31337, contract_, 5, root, mh, al::U256(12345));
  const auto sig = signer.sign(digest);
  EXPECT_EQ(ledger_->receipt_signer(5, root, mh, al::U256(12345), sig.rsv()), signer.address());
  EXPECT_NE(ledger_->receipt_signer(6, root, mh, al::U256(12345), sig.rsv()), signer.address());  // other content
}

TEST_F(Evm, LegacyTransactionsWorkToo) {
  auto o = options_for(*anvil_);
  o.contract = contract_;
  o.legacy = true;
  o.confirmations = 3;  // the receipt must be buried under two more blocks: mine them alongside
  al::EvmLedger legacy(o, al::PrivateKey::from_hex(attrace::test::kAnvilKey0));
  write_report(dir_ / "r", random_tranches(2, 3));
  const auto c = al::build_epoch(dir_ / "r", 4, al::U256(77));
  std::atomic<bool> done{false};
  std::thread miner([&] {
    al::RpcClient rpc(anvil_->url(), std::chrono::milliseconds(2000));
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
      rpc.call("evm_mine", nlohmann::json::array());
    }
  });
  const auto r = legacy.commit(c, "");
  done = true;
  miner.join();
  EXPECT_FALSE(r.already_committed);
  EXPECT_EQ(legacy.status(4).total_reward, al::U256(77));
}

TEST_F(Evm, InsufficientFundsCommitsNothing) {
  auto o = options_for(*anvil_);
  o.contract = contract_;
  al::EvmLedger poor(o, al::PrivateKey::from_hex("0x" + std::string(63, '0') + "9"));
  write_report(dir_ / "r", random_tranches(2, 4));
  const auto c = al::build_epoch(dir_ / "r", 6, al::U256(10));
  // Not the submitter and no funds: refused before anything is sent.
  EXPECT_THROW(poor.commit(c, ""), attrace::InputError);
  // The submitter committing more than it holds: "insufficient funds", nothing committed.
  const auto huge = al::build_epoch(dir_ / "r", 6, al::U256("1000000000000000000000000000"));
  try {
    ledger_->commit(huge, "");
    FAIL() << "no error";
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("insufficient funds"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(ledger_->status(6).exists);
}

TEST(EvmErrors, WrongChainIdUnreachableNodeAndTimeout) {
  Anvil anvil;
  wait_ready(anvil);
  auto o = options_for(anvil);
  o.chain_id = 1;
  try {
    al::EvmLedger l(o, std::nullopt);
    FAIL();
  } catch (const attrace::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("wrong chain id"), std::string::npos) << e.what();
  }
  al::EvmOptions closed;
  closed.rpc_url = "http://127.0.0.1:" + std::to_string(attrace::test::free_port());
  closed.chain_id = 31337;
  try {
    al::EvmLedger l(closed, std::nullopt);
    FAIL() << "no error from a closed port";
  } catch (const attrace::InputError& e) {
    FAIL() << "an unreachable node is not bad input: " << e.what();
  } catch (const attrace::RuntimeFailure& e) {
    EXPECT_NE(dynamic_cast<const al::RpcError*>(&e), nullptr) << e.what();
    EXPECT_NE(std::string(e.what()).find(closed.rpc_url), std::string::npos) << e.what();
  }
  // A server that accepts connections and never answers: the call times out.
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(s, 4);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  al::EvmOptions silent;
  silent.rpc_url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  silent.chain_id = 31337;
  silent.rpc_timeout = std::chrono::milliseconds(300);
  try {
    al::EvmLedger l(silent, std::nullopt);
    FAIL();
  } catch (const al::RpcError& e) {
    EXPECT_NE(std::string(e.what()).find("Timeout"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(silent.rpc_url), std::string::npos) << e.what();
  }
  ::close(s);
}

TEST(EvmCrash, NodeKilledMidCommitThenRerunCommitsExactlyOnce) {
  ASSERT_TRUE(std::filesystem::exists(attrace::test::contract_artifact()));
  TempDir d;
  const std::string state = d / "anvil-state.json";
  const int port = attrace::test::free_port();
  write_report(d / "r", random_tranches(4, 11));
  const auto c = al::build_epoch(d / "r", 8, al::U256(5000));
  al::Address contract{};
  {
    // Automining off: the commit transaction is accepted but not mined when the node dies.
    Anvil anvil({"--state", state, "--no-mining"}, port);
    wait_ready(anvil);
    auto o = options_for(anvil);
    o.receipt_timeout = std::chrono::milliseconds(1500);
    al::EvmLedger l(o, al::PrivateKey::from_hex(attrace::test::kAnvilKey0));
    // Deploying needs a block: mine it by hand.
    std::thread miner([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      al::RpcClient(anvil.url(), std::chrono::milliseconds(2000)).call("evm_mine", nlohmann::json::array());
    });
    contract = l.deploy(attrace::test::contract_artifact(), al::PrivateKey::from_hex(attrace::test::kAnvilKey1).address(), 60);
    miner.join();
    EXPECT_THROW(l.commit(c, ""), attrace::RuntimeFailure);  // sent, never confirmed
    anvil.stop();                                            // killed mid-commit (state dumped)
  }
  Anvil anvil({"--state", state}, port);  // restarted with its state, mining again
  wait_ready(anvil);
  auto o = options_for(anvil);
  o.contract = contract;
  al::EvmLedger l(o, al::PrivateKey::from_hex(attrace::test::kAnvilKey0));
  const auto first = l.commit(c, "");
  const auto second = l.commit(c, "");  // and once more: nothing new
  EXPECT_TRUE(second.already_committed);
  EXPECT_EQ(l.status(8).root, c.root);
  EXPECT_EQ(commit_events(l, contract, 8), 1u) << "exactly one commitment on chain";
  EXPECT_EQ(l.balance(contract), al::U256(5000));
  (void)first;
}

// ---- registry and revisions on the contract ----

al::TrancheRegistration registration_of(const std::string& id, const al::Address& account, const std::vector<al::Bytes32>& digests) {
  al::TrancheRegistration r;
  r.tranche = id;
  r.account = account;
  r.license = "CC-BY-4.0";
  r.digests = digests;
  r.example_count = digests.size();
  r.content_root = al::content_root(digests);
  return r;
}

size_t registration_events(al::EvmLedger& l, const al::Address& contract) {
  const auto topic =
      al::to_hex(al::keccak256("TrancheRegistered(bytes32,bytes32,address,uint64,uint64,address,bytes32,string,string)"));
  return l.rpc()
      .call("eth_getLogs", {{{"address", al::to_hex(contract)}, {"fromBlock", "0x0"}, {"toBlock", "latest"}, {"topics", {topic}}}})
      .size();
}

TEST_F(Evm, TranchesRegisterByContentIdempotentlyCopiesVisibleProofsCheckedOnChain) {
  std::mt19937_64 rng(99);
  std::vector<al::Bytes32> digests(37);
  for (auto& d : digests)
    for (auto& b : d) b = static_cast<uint8_t>(rng());
  const al::Address alice = al::PrivateKey::from_hex(attrace::test::kAnvilKey1).address();
  const al::Address bob = al::address_from_hex("0x" + std::string(40, 'b'), "bob");
  const auto first = ledger_->register_tranche(registration_of("clinic-north", alice, digests));
  EXPECT_FALSE(first.already_registered);
  EXPECT_EQ(first.registration.order, 1u);
  EXPECT_EQ(first.registration.registrant, al::checksum_address(ledger_->sender()));
  EXPECT_EQ(first.registration.content_root, al::content_root(digests));
  EXPECT_EQ(first.registration.example_count, 37u);
  EXPECT_EQ(first.registration.license, "CC-BY-4.0");
  EXPECT_GT(first.registration.registered_at, 0);
  const auto again = ledger_->register_tranche(registration_of("clinic-north", alice, digests));
  EXPECT_TRUE(again.already_registered);
  EXPECT_EQ(registration_events(*ledger_, contract_), 1u) << "a re-run sends nothing";
  const auto copy = ledger_->register_tranche(registration_of("mirror-north", bob, digests));
  EXPECT_EQ(copy.registration.order, 2u);
  auto fewer = digests;
  fewer.pop_back();
  EXPECT_EQ(refusal_of([&] { ledger_->register_tranche(registration_of("clinic-north", alice, fewer)); }),
            al::Refusal::tranche_exists);
  EXPECT_EQ(refusal_of([&] { ledger_->register_tranche(registration_of("clinic-north", bob, digests)); }),
            al::Refusal::tranche_exists);
  const auto all = ledger_->registrations();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].tranche, "mirror-north");
  EXPECT_EQ(all[1].account, bob);
  const al::Registration* same = al::same_content_as(all, all[1]);
  ASSERT_NE(same, nullptr);
  EXPECT_EQ(same->tranche, "clinic-north");
  EXPECT_EQ(registration_events(*ledger_, contract_), 2u);
  // Every example's C++ proof is accepted by the contract's OpenZeppelin MerkleProof; a changed
  // digest or sibling is not.
  for (size_t i = 0; i < digests.size(); ++i) {
    const auto proof = al::content_proof(digests, i);
    ASSERT_TRUE(ledger_->verify_example(al::keccak256("clinic-north"), digests[i], proof)) << "example " << i;
    if (i % 9 == 0) {
      auto other = digests[i];
      other[31] ^= 1;
      EXPECT_FALSE(ledger_->verify_example(al::keccak256("clinic-north"), other, proof));
      auto wrong = proof;
      wrong[0][0] ^= 1;
      EXPECT_FALSE(ledger_->verify_example(al::keccak256("clinic-north"), digests[i], wrong));
    }
  }
  EXPECT_THROW(ledger_->verify_example(al::keccak256("nobody"), digests[0], {}), attrace::InputError);
  EXPECT_EQ(ledger_->source(), "evm:31337:" + al::checksum_address(contract_));
}

TEST_F(Evm, UpheldDisputeThenCorrectedRevisionClaimsFollowIt) {
  write_report(dir_ / "r", random_tranches(4, 21));
  write_report(dir_ / "fixed", random_tranches(4, 22));
  const auto wrong = al::build_epoch(dir_ / "r", 3, al::U256(4000));
  EXPECT_EQ(ledger_->commit(wrong, "").status.revision, 1u);
  ledger_->dispute(3, al::keccak256("verification.json"));
  arbiter_ledger().resolve(3, true);
  EXPECT_EQ(ledger_->status(3).state, "cancelled");
  const auto fixed = al::build_epoch(dir_ / "fixed", 3, al::U256(4000));
  const auto r = ledger_->commit(fixed, "");
  EXPECT_EQ(r.status.revision, 2u);
  EXPECT_EQ(ledger_->status(3).root, fixed.root);
  advance(*ledger_, 3600);
  EXPECT_EQ(refusal_of([&] { ledger_->claim(wrong.leaves[0].leaf, wrong.proof(0)); }), al::Refusal::invalid_proof);
  al::U256 paid = 0;
  for (size_t i = 0; i < fixed.leaves.size(); ++i) {
    ledger_->claim(fixed.leaves[i].leaf, fixed.proof(i));
    paid += fixed.leaves[i].leaf.amount;
  }
  EXPECT_EQ(paid, al::U256(4000));
  EXPECT_EQ(ledger_->balance(contract_), al::U256(0)) << "revision 1 refunded, revision 2 paid out in full";
  const auto list = ledger_->epochs();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].epoch, 3u);
  EXPECT_EQ(list[0].revision, 2u);
  EXPECT_GE(ledger_->current_time(), list[0].challenge_ends);
}

}  // namespace

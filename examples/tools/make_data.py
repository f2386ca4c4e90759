#!/usr/bin/env python3
"""Writes the tool-calling example data: train.jsonl, eval.jsonl and tools.json beside this file.

Run from the repository root:  python examples/tools/make_data.py

Deterministic (random.Random with fixed seeds, stdlib only). Every row is
{"tools": [...], "messages": [...]} in the OpenAI shape. The eval split draws its statute sections, case-law
topics, defined terms, general questions and greetings from pools held out of train, uses its own seed, and is
checked so that no eval user message occurs in train. The tool results are computed here: compute_deadline
really counts the days (weekends skipped for business days, no holidays); the statute texts are short summaries
written for this example and the cases are invented.
"""

import json
import random
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_SEED, EVAL_SEED = 20250314, 77003
MAX_WORDS = 250  # per row, tool list excluded

JURISDICTIONS = ["US-federal", "US-CA", "US-NY", "US-TX", "UK", "EU"]

# Short descriptions on purpose: the tool list is in every conversation's prompt, and every token of it is read
# (not trained) at every step; these three cost about 230 tokens.
TOOLS = [
    {"type": "function", "function": {
        "name": "search_case_law",
        "description": "Search case law on a topic in one jurisdiction; up to three cases with citation and holding.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "jurisdiction": {"type": "string", "enum": JURISDICTIONS},
                "year_from": {"type": "integer"},
            },
            "required": ["query", "jurisdiction"],
            "additionalProperties": False,
        },
    }},
    {"type": "function", "function": {
        "name": "get_statute",
        "description": "Look up a section of a code (UCC, CA Civil Code, NY CPLR, FRCP, FRE, GDPR); section is the "
                       "bare number.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "section": {"type": "string"}},
            "required": ["code", "section"],
            "additionalProperties": False,
        },
    }},
    {"type": "function", "function": {
        "name": "compute_deadline",
        "description": "Due date counting days after start_date; business_days skips weekends (not holidays).",
        "parameters": {
            "type": "object",
            "properties": {
                "start_date": {"type": "string", "format": "date"},
                "days": {"type": "integer", "minimum": 1},
                "business_days": {"type": "boolean"},
            },
            "required": ["start_date", "days", "business_days"],
            "additionalProperties": False,
        },
    }},
]

SYSTEM_PROMPTS = [
    "You are a legal research assistant for an in-house legal team. Use the tools to search case law, look up "
    "statutes and compute deadlines when needed, and answer concisely.",
    "You are a careful legal assistant. Call a tool when the user asks for case law, a statute section or a "
    "deadline; otherwise answer directly.",
    "You help a litigation team with research and deadlines. Be brief and rely on what the tools return.",
    "You are an assistant for a law firm. Answer in one to three sentences and use the available tools for "
    "cases, statutes and date calculations.",
    "You are a legal team's assistant, not a lawyer. Keep answers short and accurate.",
    "Assist the legal team. Use search_case_law, get_statute and compute_deadline when they help, and never "
    "guess a date you can compute.",
]

# --------------------------------------------------------------------------------------------------------------
# Statutes: (code, section, title, summary). Summaries written for this example, not the official text.
# --------------------------------------------------------------------------------------------------------------
STATUTES = [
    ("UCC", "1-201", "General definitions",
     "\"Good faith\" means honesty in fact and the observance of reasonable commercial standards of fair dealing, "
     "and the section defines other terms used throughout the Code."),
    ("UCC", "1-304", "Obligation of good faith",
     "Every contract or duty within the Code imposes an obligation of good faith in its performance and "
     "enforcement."),
    ("UCC", "2-201", "Formal requirements; statute of frauds",
     "A contract for the sale of goods for $500 or more is not enforceable unless a writing is signed by the party "
     "against whom enforcement is sought, with exceptions for merchants' confirmations, specially manufactured "
     "goods, admissions, and goods paid for or accepted."),
    ("UCC", "2-205", "Firm offers",
     "A merchant's signed written offer that assures it will be held open cannot be revoked for lack of "
     "consideration during the stated time, or a reasonable time, but never for more than three months."),
    ("UCC", "2-207", "Additional terms in acceptance or confirmation",
     "A definite acceptance works even if it states additional terms; between merchants those terms become part "
     "of the contract unless the offer limits acceptance to its terms, they materially alter it, or objection is "
     "made within a reasonable time."),
    ("UCC", "2-209", "Modification, rescission and waiver",
     "An agreement modifying a contract for the sale of goods needs no consideration, but a signed agreement "
     "requiring modifications to be in a signed writing cannot otherwise be modified or rescinded."),
    ("UCC", "2-302", "Unconscionable contract or clause",
     "If a court finds a contract or clause unconscionable when made, it may refuse to enforce the contract, "
     "enforce the rest without the clause, or limit the clause to avoid an unconscionable result."),
    ("UCC", "2-313", "Express warranties",
     "An affirmation of fact, promise, description, sample or model that is part of the basis of the bargain "
     "creates an express warranty that the goods will conform; words such as \"warrant\" are not required."),
    ("UCC", "2-314", "Implied warranty of merchantability",
     "Unless excluded, a warranty that the goods are merchantable is implied in a sale by a merchant in goods of "
     "that kind; merchantable goods must at least pass without objection in the trade and be fit for their "
     "ordinary purposes."),
    ("UCC", "2-315", "Implied warranty of fitness for particular purpose",
     "Where the seller has reason to know the buyer's particular purpose and that the buyer relies on the "
     "seller's skill or judgment to select suitable goods, the goods are impliedly warranted fit for that purpose."),
    ("UCC", "2-316", "Exclusion or modification of warranties",
     "To exclude the implied warranty of merchantability the language must mention merchantability and, if "
     "written, be conspicuous; expressions such as \"as is\" generally exclude all implied warranties."),
    ("UCC", "2-509", "Risk of loss in the absence of breach",
     "In a shipment contract risk passes to the buyer when the goods are delivered to the carrier, in a "
     "destination contract when they are tendered there, and otherwise on receipt if the seller is a merchant."),
    ("UCC", "2-601", "Buyer's rights on improper delivery",
     "If the goods or the tender fail in any respect to conform to the contract, the buyer may reject the whole, "
     "accept the whole, or accept any commercial unit and reject the rest."),
    ("UCC", "2-606", "What constitutes acceptance of goods",
     "A buyer accepts goods by signifying after a reasonable chance to inspect that they conform or will be kept "
     "anyway, by failing to reject them effectively, or by acting inconsistently with the seller's ownership."),
    ("UCC", "2-608", "Revocation of acceptance",
     "A buyer may revoke acceptance of goods whose nonconformity substantially impairs their value, if it "
     "accepted them expecting a cure or without discovering the defect, and must do so within a reasonable time."),
    ("UCC", "2-609", "Right to adequate assurance of performance",
     "When reasonable grounds for insecurity arise, a party may demand adequate assurance in writing and suspend "
     "performance; failing to give assurance within a reasonable time, at most 30 days, is a repudiation."),
    ("UCC", "2-610", "Anticipatory repudiation",
     "When a party repudiates a performance not yet due and the loss substantially impairs the contract's value, "
     "the other party may wait a commercially reasonable time or resort to any remedy for breach, and may suspend "
     "its own performance."),
    ("UCC", "2-615", "Excuse by failure of presupposed conditions",
     "A seller's delay or non-delivery is not a breach if performance became impracticable because of an event "
     "whose non-occurrence was a basic assumption of the contract, provided the seller notifies the buyer "
     "seasonably."),
    ("UCC", "2-712", "Cover; buyer's procurement of substitute goods",
     "After a seller's breach, the buyer may buy substitute goods in good faith and without unreasonable delay "
     "and recover the difference between the cost of cover and the contract price, plus incidental and "
     "consequential damages."),
    ("UCC", "2-725", "Statute of limitations in contracts for sale",
     "An action for breach of a contract for sale must be commenced within four years after the cause of action "
     "accrues; the parties may shorten the period to not less than one year but may not extend it."),
    ("UCC", "9-203", "Attachment and enforceability of security interest",
     "A security interest attaches when value has been given, the debtor has rights in the collateral, and the "
     "debtor has authenticated a security agreement describing it or the secured party has possession or control."),
    ("CA Civil Code", "1542", "General release; extent",
     "A general release does not extend to claims the releasing party does not know or suspect to exist in its "
     "favor when signing, and which, if known, would have materially affected the settlement."),
    ("CA Civil Code", "1550", "Essential elements of contract",
     "A contract requires parties capable of contracting, their consent, a lawful object, and sufficient cause "
     "or consideration."),
    ("CA Civil Code", "1624", "Statute of frauds",
     "Certain contracts are invalid unless they, or a note or memorandum of them, are in writing and subscribed "
     "by the party to be charged, including agreements not to be performed within a year and sales of real "
     "property."),
    ("CA Civil Code", "1668", "Contracts contrary to policy of law",
     "Contracts whose object is to exempt anyone from responsibility for their own fraud, willful injury to "
     "another, or violation of law, whether willful or negligent, are against the policy of the law."),
    ("CA Civil Code", "1671", "Liquidated damages",
     "Outside certain consumer contracts, a provision liquidating damages for breach is valid unless the party "
     "challenging it shows it was unreasonable under the circumstances existing when the contract was made."),
    ("CA Civil Code", "1689", "Rescission",
     "A party may rescind a contract in listed cases, including where its consent was given by mistake or "
     "obtained through duress, menace, fraud or undue influence, or where the consideration fails."),
    ("CA Civil Code", "1717", "Attorney's fees in contract actions",
     "Where a contract awards attorney's fees for enforcing it to one party, the party who prevails on the "
     "contract is entitled to reasonable fees, whether or not it is the party named in the clause."),
    ("CA Civil Code", "1950.5", "Residential security deposits",
     "A landlord must return a residential tenant's security deposit, with an itemized statement of any "
     "deductions for unpaid rent, damage beyond ordinary wear and tear, or cleaning, within 21 days after the "
     "tenant vacates."),
    ("CA Civil Code", "3294", "Exemplary damages",
     "In an action not arising from contract, punitive damages may be awarded where it is proven by clear and "
     "convincing evidence that the defendant was guilty of oppression, fraud, or malice."),
    ("CA Civil Code", "3300", "Measure of contract damages",
     "For breach of contract, damages are the amount that will compensate the aggrieved party for all the "
     "detriment proximately caused, or likely to result in the ordinary course of things."),
    ("CA Civil Code", "3333", "Measure of tort damages",
     "For breach of an obligation not arising from contract, damages are the amount that will compensate for all "
     "the detriment proximately caused, whether or not it could have been anticipated."),
    ("NY CPLR", "213", "Actions to be commenced within six years",
     "Actions on a contractual obligation, actions for which no other limitation is specified, and fraud actions "
     "(or within two years of discovery, if later) must be commenced within six years."),
    ("NY CPLR", "214", "Actions to be commenced within three years",
     "Actions for personal injury or injury to property, and malpractice actions other than medical, dental or "
     "podiatric malpractice, must be commenced within three years."),
    ("NY CPLR", "308", "Personal service upon a natural person",
     "An individual may be served by personal delivery, by delivery to a person of suitable age and discretion at "
     "the home or workplace plus mailing, by delivery to a designated agent, or by affix-and-mail if due "
     "diligence fails."),
    ("NY CPLR", "2103", "Service of papers",
     "Papers in a pending action may be served on a party's attorney by personal delivery, mail, overnight "
     "delivery or electronic means; where service is by mail, five days are added to any period that runs from "
     "service."),
    ("NY CPLR", "3012", "Service of pleadings",
     "An answer must be served within 20 days after service of the complaint, or within 30 days where the summons "
     "and complaint were served other than by personal delivery within the state."),
    ("NY CPLR", "3101", "Scope of disclosure",
     "There shall be full disclosure of all matter material and necessary to the prosecution or defense of an "
     "action, regardless of the burden of proof."),
    ("NY CPLR", "3211", "Motion to dismiss",
     "A party may move to dismiss a cause of action on listed grounds, including documentary evidence, lack of "
     "jurisdiction, the statute of limitations, release or payment, and failure to state a cause of action."),
    ("NY CPLR", "3212", "Motion for summary judgment",
     "Any party may move for summary judgment once issue is joined, generally within 120 days after the note of "
     "issue is filed, and the motion is granted if there is no triable issue of fact."),
    ("NY CPLR", "5001", "Interest to verdict, report or decision",
     "Interest is recoverable on sums awarded for breach of contract, and on damages for interference with title "
     "to or possession of property, from the earliest ascertainable date the cause of action existed."),
    ("NY CPLR", "5004", "Rate of interest",
     "Interest is at nine percent per annum unless a statute provides otherwise, with a lower rate for judgments "
     "on certain consumer debts."),
    ("NY CPLR", "7501", "Effect of arbitration agreement",
     "A written agreement to arbitrate a present or future controversy is enforceable, and the court will not "
     "consider whether the claim is tenable or pass on the merits of the dispute."),
    ("FRCP", "4", "Summons",
     "A summons must be served with the complaint, and if a defendant is not served within 90 days after the "
     "complaint is filed, the court must dismiss without prejudice or order service by a set time, extending it "
     "for good cause."),
    ("FRCP", "6", "Computing and extending time",
     "For periods stated in days, the trigger day is excluded, every day including weekends and holidays is "
     "counted, and a last day falling on a weekend or legal holiday rolls to the next day that is not one."),
    ("FRCP", "8", "General rules of pleading",
     "A pleading stating a claim must contain a short and plain statement of the grounds for jurisdiction, a "
     "short and plain statement of the claim showing entitlement to relief, and a demand for the relief sought."),
    ("FRCP", "11", "Signing pleadings; sanctions",
     "By signing a filing, an attorney certifies that it has no improper purpose, its legal contentions are "
     "warranted, and its factual contentions have evidentiary support; violations may be sanctioned after a "
     "21-day safe harbor."),
    ("FRCP", "12", "Defenses and objections",
     "A defendant must serve an answer within 21 days after being served with the summons and complaint (60 days "
     "if service was waived) and may raise certain defenses by motion, including failure to state a claim."),
    ("FRCP", "15", "Amended and supplemental pleadings",
     "A party may amend once as a matter of course within 21 days after serving its pleading or after a "
     "responsive pleading or Rule 12 motion; otherwise it needs consent or leave, freely given when justice "
     "requires."),
    ("FRCP", "23", "Class actions",
     "A class may be certified only if joinder of all members is impracticable, there are common questions of "
     "law or fact, the representative's claims are typical, and the representative will adequately protect the "
     "class."),
    ("FRCP", "26", "General provisions governing discovery",
     "Parties may obtain discovery of any nonprivileged matter relevant to a claim or defense and proportional to "
     "the needs of the case, and must make initial disclosures without awaiting a request."),
    ("FRCP", "30", "Depositions by oral examination",
     "A party may depose any person by oral questions; unless stipulated or ordered otherwise, each side may take "
     "10 depositions and each is limited to one day of seven hours."),
    ("FRCP", "33", "Interrogatories to parties",
     "Unless stipulated or ordered otherwise, a party may serve at most 25 interrogatories, including discrete "
     "subparts, and the responding party must answer or object within 30 days after service."),
    ("FRCP", "34", "Producing documents and things",
     "A party may request documents, electronically stored information and tangible things in another party's "
     "possession, custody or control, and the written response is due within 30 days after service."),
    ("FRCP", "36", "Requests for admission",
     "A matter is admitted unless, within 30 days after being served, the party to whom the request is directed "
     "serves a written answer or objection."),
    ("FRCP", "56", "Summary judgment",
     "The court shall grant summary judgment if the movant shows that there is no genuine dispute as to any "
     "material fact and the movant is entitled to judgment as a matter of law."),
    ("FRCP", "65", "Injunctions and restraining orders",
     "A preliminary injunction may issue only on notice to the adverse party, and a temporary restraining order "
     "issued without notice expires at the time set by the court, at most 14 days unless extended for good cause."),
    ("FRE", "401", "Test for relevant evidence",
     "Evidence is relevant if it has any tendency to make a fact of consequence more or less probable than it "
     "would be without the evidence."),
    ("FRE", "403", "Excluding relevant evidence for prejudice, confusion or waste of time",
     "The court may exclude relevant evidence if its probative value is substantially outweighed by a danger of "
     "unfair prejudice, confusing the issues, misleading the jury, undue delay, or needless cumulative evidence."),
    ("FRE", "408", "Compromise offers and negotiations",
     "Offers to compromise a disputed claim and statements made in settlement negotiations are not admissible to "
     "prove or disprove the validity or amount of the claim."),
    ("FRE", "502", "Attorney-client privilege and work product; limits on waiver",
     "An inadvertent disclosure in a federal proceeding does not waive privilege if the holder took reasonable "
     "steps to prevent it and promptly took reasonable steps to rectify the error."),
    ("FRE", "702", "Testimony by expert witnesses",
     "A qualified expert may give an opinion if it is more likely than not that the expertise will help the trier "
     "of fact, the testimony rests on sufficient facts, and reliable methods were reliably applied."),
    ("FRE", "801", "Definitions; exclusions from hearsay",
     "Hearsay is a statement, other than one made while testifying at the current trial or hearing, offered to "
     "prove the truth of the matter asserted; an opposing party's own statement is not hearsay."),
    ("FRE", "803", "Exceptions to the rule against hearsay",
     "Some statements are admissible whether or not the declarant is available, including present sense "
     "impressions, excited utterances, statements for medical diagnosis, and regularly kept business records."),
    ("GDPR", "5", "Principles relating to processing of personal data",
     "Personal data must be processed lawfully, fairly and transparently, for specified purposes, limited to what "
     "is necessary, kept accurate, stored no longer than necessary and kept secure, and the controller must be "
     "able to show compliance."),
    ("GDPR", "6", "Lawfulness of processing",
     "Processing is lawful only if a basis applies: consent, a contract, a legal obligation, vital interests, a "
     "public task, or legitimate interests not overridden by the data subject's rights."),
    ("GDPR", "7", "Conditions for consent",
     "The controller must be able to show consent was given, the request must be clear and distinguishable from "
     "other matters, and consent can be withdrawn at any time as easily as it was given."),
    ("GDPR", "9", "Processing of special categories of personal data",
     "Processing data about racial or ethnic origin, political opinions, religion, union membership, genetic or "
     "biometric data, health, or sex life is prohibited unless an exception such as explicit consent applies."),
    ("GDPR", "12", "Transparent information and communication",
     "The controller must act on a data subject's request without undue delay and within one month of receipt, "
     "extendable by two further months where necessary given the complexity and number of requests."),
    ("GDPR", "15", "Right of access by the data subject",
     "A data subject may obtain confirmation of whether their personal data is processed and, if so, a copy of "
     "it with information such as the purposes, recipients, retention period and source."),
    ("GDPR", "17", "Right to erasure (right to be forgotten)",
     "A data subject can require the controller to erase their personal data without undue delay on listed "
     "grounds, such as the data no longer being needed or consent being withdrawn, subject to exceptions "
     "including legal claims."),
    ("GDPR", "20", "Right to data portability",
     "Where processing is automated and based on consent or contract, the data subject can receive their data in "
     "a structured, commonly used, machine-readable format and have it transmitted to another controller."),
    ("GDPR", "28", "Processor",
     "A controller may use only processors that give sufficient guarantees, under a binding contract setting out "
     "the subject matter, duration, nature and purpose of the processing and the processor's obligations."),
    ("GDPR", "32", "Security of processing",
     "Controllers and processors must implement technical and organisational measures giving security "
     "appropriate to the risk, such as pseudonymisation, encryption and regular testing."),
    ("GDPR", "33", "Notification of a personal data breach to the supervisory authority",
     "The controller must notify a personal data breach to the supervisory authority without undue delay and, "
     "where feasible, within 72 hours of becoming aware of it, unless it is unlikely to result in a risk to "
     "individuals."),
    ("GDPR", "35", "Data protection impact assessment",
     "Where processing, especially with new technologies, is likely to result in a high risk to individuals' "
     "rights and freedoms, the controller must assess its impact before starting."),
    ("GDPR", "46", "Transfers subject to appropriate safeguards",
     "Without an adequacy decision, personal data may go to a third country only with appropriate safeguards, "
     "such as standard contractual clauses or binding corporate rules, and enforceable rights for data subjects."),
    ("GDPR", "83", "General conditions for imposing administrative fines",
     "Fines must be effective, proportionate and dissuasive, and the most serious infringements can draw up to "
     "EUR 20 million or 4% of total worldwide annual turnover, whichever is higher."),
]
EVAL_STATUTES = {("UCC", "2-205"), ("UCC", "2-609"), ("UCC", "2-725"), ("UCC", "9-203"), ("GDPR", "46"),
                 ("CA Civil Code", "1668"), ("CA Civil Code", "3294"), ("NY CPLR", "214"), ("NY CPLR", "7501"),
                 ("FRCP", "15"), ("FRCP", "36"), ("FRE", "403"), ("GDPR", "20"), ("GDPR", "35"), ("GDPR", "83")}


def ref_forms(code, sec):
    """Ways a user names a section; the section argument is always the bare number."""
    if code == "GDPR":
        return [f"GDPR Article {sec}", f"Article {sec} of the GDPR", f"GDPR Art. {sec}", f"GDPR article {sec}"]
    if code in ("FRCP", "FRE"):
        return [f"{code} {sec}", f"{code} Rule {sec}", f"Rule {sec} of the {code}", f"{code} rule {sec}"]
    return [f"{code} {sec}", f"{code} § {sec}", f"{code} section {sec}", f"section {sec} of the {code}"]


def canon_ref(code, sec):
    return {"UCC": f"UCC § {sec}", "CA Civil Code": f"CA Civil Code § {sec}", "NY CPLR": f"NY CPLR {sec}",
            "FRCP": f"FRCP {sec}", "FRE": f"FRE {sec}", "GDPR": f"GDPR Article {sec}"}[code]


# --------------------------------------------------------------------------------------------------------------
# Case-law topics: (query, jurisdictions, holdings, related statute or None). Cases built from these are invented.
# --------------------------------------------------------------------------------------------------------------
US4 = ["US-federal", "US-CA", "US-NY", "US-TX"]
TOPICS = [
    ("non-compete enforceability", ["US-NY", "US-TX", "UK", "US-federal"], [
        "A non-compete is enforced only to the extent it is reasonable in duration, area and scope and protects a "
        "legitimate business interest",
        "A two-year restriction covering the employer's whole market was broader than necessary and was not "
        "enforced as written",
        "Protecting client relationships and confidential information is a legitimate interest, but avoiding "
        "ordinary competition is not"], None),
    ("implied warranty of merchantability", US4, [
        "Goods that would not pass without objection in the trade breach the implied warranty of merchantability",
        "A disclaimer that did not mention merchantability and was not conspicuous was ineffective",
        "A buyer who waited more than a year to complain had not given notice of breach within a reasonable time"],
     ("UCC", "2-314")),
    ("adverse possession", ["US-CA", "US-NY", "US-TX", "UK"], [
        "The claimant must show actual, open, exclusive and continuous possession for the full statutory period",
        "Occasional mowing of a boundary strip was not enough to show exclusive possession",
        "A fence enclosing the disputed strip throughout the period supported the claim"], None),
    ("promissory estoppel", US4, [
        "A clear promise, reasonable and foreseeable reliance, and injury caused by that reliance are required",
        "Vague assurances made during negotiations were not a clear and unambiguous promise",
        "An employee who turned down another job in reliance on a written offer could recover reliance damages"],
     None),
    ("piercing the corporate veil", US4, [
        "Shareholders are liable only where they dominated the company and used that control to commit a wrong "
        "against the plaintiff",
        "Undercapitalization alone did not justify disregarding the corporate form",
        "Commingling funds and ignoring corporate formalities supported piercing when combined with unfairness to "
        "creditors"], None),
    ("economic loss rule", US4, [
        "A party may not recover purely economic losses in tort when the duty breached arises only from the "
        "contract",
        "Damage to the product itself is an economic loss recoverable, if at all, in contract",
        "The rule did not bar a fraud claim based on misrepresentations independent of the contract"], None),
    ("duty to mitigate damages", US4 + ["UK"], [
        "An injured party cannot recover losses it could have avoided by reasonable efforts",
        "The breaching party bears the burden of proving that the claimant failed to mitigate",
        "A landlord's reasonable efforts to re-let the premises satisfied the duty to mitigate"], None),
    ("liquidated damages clauses", US4, [
        "A liquidated damages clause is enforceable if damages were hard to estimate and the sum was a reasonable "
        "forecast when the contract was made",
        "A fixed sum far out of proportion to any likely loss was an unenforceable penalty",
        "The clause was upheld even though the actual damages turned out to be lower"], ("CA Civil Code", "1671")),
    ("forum selection clauses", US4, [
        "A mandatory forum selection clause is presumptively valid and enforced unless enforcement would be "
        "unreasonable or unjust",
        "A permissive clause allowing suit in a named court did not bar suit elsewhere",
        "A clause in a browsewrap agreement the user never saw was not binding"], None),
    ("arbitration clause enforceability", US4, [
        "A written agreement to arbitrate is enforced according to its terms, and doubts about scope are resolved "
        "in favor of arbitration",
        "An arbitration clause buried in an unsigned email footer did not show mutual assent",
        "A delegation clause sent the question of arbitrability to the arbitrator"], ("NY CPLR", "7501")),
    ("spoliation of evidence", US4, [
        "A party that destroys evidence after litigation is reasonably anticipated may face sanctions, including "
        "an adverse inference",
        "An adverse inference instruction for lost electronic information required a finding of intent to deprive",
        "Routine deletion under a retention policy before any duty to preserve arose was not sanctionable"], None),
    ("waiver of attorney-client privilege", US4, [
        "Voluntarily disclosing privileged communications to a third party waives the privilege for them",
        "An inadvertent production did not waive privilege where the producing party took reasonable steps to "
        "prevent and correct it",
        "Asserting an advice-of-counsel defense put the advice at issue and waived privilege over it"],
     ("FRE", "502")),
    ("work product protection", US4, [
        "Documents prepared in anticipation of litigation are protected unless the other side shows substantial "
        "need and undue hardship",
        "Business records created in the ordinary course were not work product even though litigation was "
        "possible",
        "An attorney's mental impressions and legal theories receive nearly absolute protection"], None),
    ("personal jurisdiction over online sellers", US4, [
        "A website accessible in the forum is not enough without conduct purposefully directed at the forum",
        "Regular sales and shipments to forum residents established purposeful availment",
        "A single sale arranged by the plaintiff did not support specific jurisdiction"], None),
    ("trade secret misappropriation", US4 + ["UK"], [
        "Information is a trade secret only if it derives value from secrecy and the owner took reasonable "
        "measures to keep it secret",
        "Customer lists compiled through significant effort were protectable trade secrets",
        "General skills and knowledge gained on the job are not trade secrets and may be used by a departing "
        "employee"], None),
    ("fair use", ["US-federal"], [
        "Courts weigh the purpose and character of the use, the nature of the work, the amount used, and the "
        "effect on the market",
        "A transformative use that adds new meaning or purpose weighs in favor of fair use",
        "Copying a whole work for the same commercial purpose as the original was not fair use"], None),
    ("trademark likelihood of confusion", ["US-federal", "UK", "EU"], [
        "Likelihood of confusion turns on the similarity of the marks and the goods, the strength of the mark, "
        "and any actual confusion",
        "Marks that shared a descriptive word but differed in overall impression were not confusingly similar",
        "A well-known mark received broader protection against use on related goods"], None),
    ("constructive dismissal", ["UK"], [
        "An employee may treat the contract as ended where the employer commits a repudiatory breach, such as "
        "breaching the implied term of trust and confidence",
        "An employee who delayed too long before resigning was taken to have affirmed the contract",
        "A unilateral cut in pay was a fundamental breach entitling the employee to resign"], None),
    ("unfair dismissal", ["UK"], [
        "A dismissal is fair only if the employer shows a potentially fair reason and acted reasonably in relying "
        "on it",
        "A misconduct dismissal was unfair where the employer did not carry out a reasonable investigation",
        "The tribunal may not substitute its own view for the range of reasonable responses open to the employer"],
     None),
    ("wrongful discharge in violation of public policy", ["US-CA", "US-TX"], [
        "An at-will employee may not be fired for refusing to perform an illegal act",
        "An employee handbook promising dismissal only for cause could create an implied contract",
        "A general complaint about workplace morale did not implicate a fundamental public policy"], None),
    ("data subject access requests", ["EU", "UK"], [
        "The right of access covers a copy of the personal data itself, not merely a summary of it",
        "A controller may refuse a request only if it is manifestly unfounded or excessive",
        "The data subject need not give reasons for making an access request"], ("GDPR", "15")),
    ("right to erasure", ["EU", "UK"], [
        "A search engine can be required to delist links to inaccurate or outdated personal information",
        "Erasure could be refused where the data was needed to establish or defend legal claims",
        "The balance between privacy and the public interest depends on the person's role in public life"],
     ("GDPR", "17")),
    ("non-material damage under the GDPR", ["EU"], [
        "A mere infringement of the GDPR does not by itself give a right to compensation; damage must be shown",
        "There is no threshold of seriousness for non-material damage, but the claimant must prove it",
        "Well-founded fear that leaked data will be misused can itself be non-material damage"], ("GDPR", "83")),
    ("international data transfers", ["EU"], [
        "Standard contractual clauses remain valid, but exporters must check that the destination's law lets them "
        "be complied with",
        "An adequacy decision that did not ensure essentially equivalent protection was invalid",
        "Supplementary measures such as encryption may be needed where local surveillance law undermines the "
        "safeguards"], ("GDPR", "46")),
    ("implied warranty of habitability", ["US-CA", "US-NY"], [
        "A residential landlord must keep the premises fit for human habitation throughout the tenancy",
        "A tenant may reduce rent in proportion to a serious habitability defect",
        "Minor cosmetic problems did not breach the warranty"], None),
    ("security deposit return", ["US-CA", "US-NY", "US-TX"], [
        "A landlord that fails to return the deposit or itemize deductions on time may forfeit the right to keep "
        "any of it",
        "Deductions may cover damage beyond ordinary wear and tear, but not routine repainting after a long "
        "tenancy",
        "Bad-faith retention of a deposit exposed the landlord to statutory penalties"], ("CA Civil Code", "1950.5")),
    ("negligent misrepresentation", ["US-federal", "US-CA", "US-NY", "UK"], [
        "The claim requires a duty to provide accurate information, a false statement, and reasonable reliance",
        "Arm's-length commercial parties did not have the special relationship needed for the claim",
        "Statements of future intention or opinion were not actionable misrepresentations of fact"], None),
    ("fraudulent inducement", US4, [
        "A party induced to contract by a knowingly false statement of material fact may rescind or sue for "
        "damages",
        "A general merger clause did not bar a fraud claim, but a specific disclaimer of reliance could",
        "Reliance on an oral statement flatly contradicted by the written contract was unreasonable"],
     ("CA Civil Code", "1689")),
    ("director fiduciary duties", ["US-federal", "US-CA", "US-NY", "UK"], [
        "Directors owe duties of care and loyalty and must not put their own interests ahead of the company's",
        "A director who took a corporate opportunity without disclosure breached the duty of loyalty",
        "Directors who made an informed decision in good faith were not liable for a poor business outcome"],
     None),
    ("business judgment rule", ["US-federal", "US-CA", "US-NY"], [
        "Courts will not second-guess a board decision made in good faith, on an informed basis and free of "
        "conflicts",
        "The presumption was rebutted where a majority of the directors had a personal interest in the deal",
        "A board that approved a merger without reviewing any valuation was not protected"], None),
    ("electronic signatures", JURISDICTIONS, [
        "A signature may not be denied legal effect solely because it is in electronic form",
        "A typed name at the end of an email satisfied a writing requirement where the sender meant to "
        "authenticate the message",
        "A party relying on an electronic signature must show it was the act of the person who supposedly signed"],
     None),
    ("force majeure", US4 + ["UK"], [
        "A force majeure clause excuses performance only for events within its terms that are beyond the "
        "party's control",
        "Increased cost or reduced profitability did not trigger the clause",
        "A government-ordered shutdown fell within a clause covering acts of government"], ("UCC", "2-615")),
    ("frustration of purpose", US4 + ["UK"], [
        "A contract is discharged only where an unforeseen event destroys its principal purpose and neither party "
        "assumed that risk",
        "A foreseeable change in market conditions did not frustrate the contract",
        "Cancellation of the event for which premises were hired frustrated the purpose of the hire"], None),
    ("anticipatory repudiation", US4 + ["UK"], [
        "A repudiation must be a clear and unequivocal refusal to perform",
        "Expressing doubts about the ability to perform was not a repudiation",
        "The innocent party may treat the contract as ended and sue for damages at once"], ("UCC", "2-610")),
    ("battle of the forms", US4, [
        "Conflicting terms in the parties' forms knocked each other out and were replaced by default rules",
        "An arbitration clause added in an acceptance form was a material alteration and did not become part of "
        "the contract",
        "Where the writings did not form a contract, the terms were those on which the writings agreed plus the "
        "Code's gap-fillers"], ("UCC", "2-207")),
    ("unconscionability", US4, [
        "Unconscionability requires both procedural and substantive unfairness, though more of one can offset less "
        "of the other",
        "A take-it-or-leave-it consumer contract with a one-sided remedy clause was unconscionable",
        "A sophisticated commercial party could not escape a negotiated term as unconscionable"], ("UCC", "2-302")),
    ("implied covenant of good faith and fair dealing", ["US-federal", "US-CA", "US-NY"], [
        "Every contract implies that neither party will injure the other's right to receive the benefits of the "
        "agreement",
        "The covenant cannot create obligations inconsistent with the express terms",
        "Using contractual discretion to deprive the other party of its bargain breached the covenant"],
     ("UCC", "1-304")),
    ("defamation of public figures", US4, [
        "A public figure must prove by clear and convincing evidence that the statement was made with actual "
        "malice",
        "Statements of opinion that cannot be proved false are not actionable",
        "A private person who voluntarily entered a public controversy was a limited-purpose public figure"], None),
    ("premises liability", ["US-CA", "US-NY", "US-TX"], [
        "An owner must use reasonable care to make the premises safe for invitees or warn of hidden dangers",
        "An open and obvious condition did not require a warning",
        "The owner was not liable without actual or constructive notice of the spill"], None),
    ("product design defect", US4, [
        "A design is defective if its risks outweigh its benefits and a safer feasible alternative existed",
        "Compliance with federal safety standards was evidence of, but not conclusive proof of, a safe design",
        "The plaintiff failed to show that the alleged defect caused the injury"], None),
    ("preliminary injunctions", ["US-federal"], [
        "The movant must show likely success on the merits, irreparable harm, a favorable balance of equities, "
        "and that an injunction serves the public interest",
        "Harm that money damages can adequately remedy is not irreparable",
        "Long delay in seeking relief undercut the claim of irreparable harm"], ("FRCP", "65")),
    ("class certification", ["US-federal"], [
        "Commonality requires a common question whose answer will resolve an issue central to every class "
        "member's claim",
        "Individual damages calculations did not by themselves defeat predominance",
        "The court must conduct a rigorous analysis even if it overlaps with the merits"], ("FRCP", "23")),
    ("summary judgment standard", ["US-federal"], [
        "Summary judgment is proper only where no genuine dispute of material fact exists, viewing the evidence "
        "for the non-movant",
        "A party cannot defeat summary judgment with conclusory affidavits",
        "Credibility determinations are for the jury, not the court on summary judgment"], ("FRCP", "56")),
    ("admissibility of expert testimony", ["US-federal"], [
        "The trial judge is a gatekeeper and must find the expert's methods reliable and reliably applied",
        "An expert opinion resting on insufficient data was excluded",
        "Challenges to the weight of an expert's conclusions go to cross-examination, not admissibility"],
     ("FRE", "702")),
    ("limitation of liability clauses", US4 + ["UK"], [
        "A clause capping liability is generally enforced between sophisticated commercial parties",
        "Exclusions are read narrowly, and clear words are needed to cover deliberate or grossly negligent "
        "conduct",
        "A cap on consequential damages did not exclude direct lost profits"], None),
    ("general releases of unknown claims", ["US-CA"], [
        "A general release covers unknown claims only if the releasing party expressly waived Civil Code section "
        "1542",
        "A waiver of section 1542 was enforced where both parties were represented by counsel",
        "A release did not cover claims arising after it was signed"], ("CA Civil Code", "1542")),
    ("personal data breach notification", ["EU", "UK"], [
        "A controller becomes aware of a breach when it is reasonably certain that an incident compromised "
        "personal data",
        "Failing to notify the authority within 72 hours without a recorded reason aggravated the fine",
        "A breach unlikely to result in risk to individuals did not need notifying but had to be documented"],
     ("GDPR", "33")),
]
MIN_YEAR = {"data subject access requests": 2018, "right to erasure": 2014, "non-material damage under the GDPR": 2019,
            "international data transfers": 2015, "personal data breach notification": 2018}
EVAL_TOPICS = {"promissory estoppel", "spoliation of evidence", "frustration of purpose",
               "defamation of public figures", "international data transfers", "business judgment rule",
               "work product protection", "premises liability", "unfair dismissal"}

JUR_WORDS = {  # adjective forms ("Texas cases"), "in" forms ("in Texas")
    "US-federal": (["federal", "US federal"], ["federal court", "the federal courts"]),
    "US-CA": (["California"], ["California"]),
    "US-NY": (["New York"], ["New York"]),
    "US-TX": (["Texas"], ["Texas"]),
    "UK": (["UK", "English"], ["the UK", "England"]),
    "EU": (["EU"], ["the EU"]),
}

SURNAMES = ["Harlan", "Okafor", "Brennan", "Delgado", "Whitcombe", "Nakamura", "Pryce", "Castellano", "Lindqvist",
            "Moreau", "Ashby", "Kowalski", "Fairweather", "Abernathy", "Quintero", "Hollis", "Vance", "Mbeki",
            "Thornton", "Radcliffe", "Sorensen", "Ferreira", "Gallagher", "Imrie", "Petrakis", "Wexley", "Duarte",
            "Marchetti", "Osei", "Halvorsen", "Beaumont", "Carrow", "Iyer", "Strand", "Lockhart", "Novak"]
COMPANIES = ["Westbrook Supply", "Harbor Logistics", "Pinecrest Holdings", "Bluewater Foods", "Redline Software",
             "Summit Ridge Builders", "Granite Point Capital", "Northgate Medical", "Silverleaf Realty",
             "Coastal Freight", "Ironwood Manufacturing", "Meridian Health", "Oakhaven Properties", "Brightpath Media",
             "Keystone Analytics", "Larkspur Apparel", "Copperfield Energy", "Tidewater Marine", "Ashgrove Farms",
             "Vantage Retail", "Cedar Hill Dental", "Falcon Aerospace", "Evergreen Staffing", "Lumen Devices"]
US_SUFFIX = ["Co.", "Inc.", "LLC", "Corp."]
UK_SUFFIX = ["Ltd", "plc", "LLP"]
EU_SUFFIX = ["GmbH", "SA", "BV", "SpA", "AB"]
CIRCUITS = ["1st", "2d", "3d", "4th", "5th", "6th", "7th", "8th", "9th", "10th", "11th", "D.C."]
DISTRICTS = ["S.D.N.Y.", "N.D. Cal.", "E.D. Tex.", "D. Mass.", "N.D. Ill.", "C.D. Cal.", "D.N.J.", "W.D. Wash."]


def party(rng, jur):
    if rng.random() < 0.5:
        return rng.choice(SURNAMES)
    suffix = UK_SUFFIX if jur == "UK" else EU_SUFFIX if jur == "EU" else US_SUFFIX
    return f"{rng.choice(COMPANIES)} {rng.choice(suffix)}"


def case_name(rng, jur):
    a, b = party(rng, jur), party(rng, jur)
    while b.split()[0] == a.split()[0]:
        b = party(rng, jur)
    return f"{a} {'v.' if jur.startswith('US') else 'v'} {b}"


def citation(rng, jur, year):
    vol, page = rng.randint(1, 999), rng.randint(1, 1499)
    if jur == "US-federal":
        if rng.random() < 0.6:
            reporter = "F.4th" if year >= 2021 else "F.3d"
            vol = rng.randint(1, 120) if year >= 2021 else vol
            return f"{vol} {reporter} {page} ({rng.choice(CIRCUITS)} Cir. {year})"
        reporter = "F. Supp. 3d" if year >= 2014 else "F. Supp. 2d"
        return f"{rng.randint(1, 700) if year >= 2014 else vol} {reporter} {page} ({rng.choice(DISTRICTS)} {year})"
    if jur == "US-CA":
        reporter = "Cal. App. 5th" if year >= 2016 else "Cal. App. 4th"
        return f"{rng.randint(1, 110) if year >= 2016 else rng.randint(1, 248)} {reporter} {page} ({year})"
    if jur == "US-NY":
        if rng.random() < 0.35:
            return f"{rng.randint(1, 42)} N.Y.3d {page} ({year})"
        return f"{rng.randint(1, 230)} A.D.3d {page} ({rng.choice(['1st', '2d', '3d', '4th'])} Dep't {year})"
    if jur == "US-TX":
        court = "Tex." if rng.random() < 0.3 else "Tex. App."
        return f"{rng.randint(1, 700)} S.W.3d {page} ({court} {year})"
    if jur == "UK":
        court = rng.choice(["EWCA Civ", "EWCA Civ", "EWHC", "UKSC"] if year >= 2009 else ["EWCA Civ", "EWHC"])
        num = rng.randint(1, 60) if court == "UKSC" else rng.randint(10, 3200)
        div = f" ({rng.choice(['Ch', 'Comm', 'KB' if year >= 2023 else 'QB'])})" if court == "EWHC" else ""
        return f"[{year}] {court} {num}{div}"
    return f"C-{rng.randint(10, 799)}/{(year - rng.randint(1, 2)) % 100:02d}, EU:C:{year}:{rng.randint(10, 999)}"


def lc_first(s):
    word = s.split()[0]
    if len(word) > 1 and word.isupper():
        return s
    return s[0].lower() + s[1:]


def cap_first(s):
    return s[0].upper() + s[1:]


# --------------------------------------------------------------------------------------------------------------
# Deadlines
# --------------------------------------------------------------------------------------------------------------
def compute_deadline(start, days, business_days):
    if not business_days:
        return start + timedelta(days=days)
    d, counted = start, 0
    while counted < days:
        d += timedelta(days=1)
        if d.weekday() < 5:
            counted += 1
    return d


def long_date(d):
    return f"{d:%B} {d.day}, {d.year}"


def full_date(d):
    return f"{d:%A}, {long_date(d)}"


def user_date(rng, d):
    return d.isoformat() if rng.random() < 0.5 else long_date(d)


START, END = date(2024, 1, 1), date(2026, 12, 31)

# --------------------------------------------------------------------------------------------------------------
# Phrasings
# --------------------------------------------------------------------------------------------------------------
CASE_USER = [
    "Find {adj} cases on {topic}{since}.",
    "Are there any {adj} decisions about {topic}{since}?",
    "I need case law on {topic} in {inj}{since}.",
    "Search {adj} case law for {topic}{since}.",
    "What have {adj} courts said about {topic}{since}?",
    "Pull a few {adj} cases dealing with {topic}{since}.",
    "Can you find precedent on {topic} ({code}){since}?",
    "Research request: {topic}, {adj} law{since}.",
    "Looking for authority on {topic} under {adj} law{since}. What's out there?",
    "Give me the leading {adj} cases on {topic}{since}.",
    "We have a dispute about {topic} in {inj}. Any useful cases{since}?",
    "Case law search: {topic}, jurisdiction {code}{since}.",
    "For a brief on {topic}, what {adj} authority can you find{since}?",
]
SINCE = [" since {y}", " from {y} onward", " decided in {y} or later", " from {y} on"]
SINCE_ANS = [" since {y}", " from {y} onward", " decided in {y} or later"]

STATUTE_USER = [
    "Pull up {ref}.",
    "What does {ref} say?",
    "Can you get me the text of {ref}?",
    "I need {ref} for a memo. What does it provide?",
    "Summarise {ref} for me.",
    "Look up {ref}, please.",
    "Quick check: what's in {ref}?",
    "Opposing counsel cites {ref}. What does that section cover?",
    "Remind me what {ref} requires.",
    "Fetch {ref} so I can quote it in the brief.",
    "What's the rule in {ref}?",
    "The client asked about {ref}. Can you look it up?",
]
STATUTE_ANS = [
    "{canon} ({title}) provides that {text_lc}",
    "Here is the gist of {canon}, \"{title}\": {text_lc}",
    "{canon} is headed \"{title}\". In short, {text_lc}",
    "In summary, {canon} says that {text_lc}",
    "Under {canon}, {text_lc}",
    "{canon} covers {title_lc}: {text_lc}",
]

# (user template, answer template). {n} {unit}, {date} as the user wrote it; answers get {due}, {start}.
DEADLINE_USER = [
    ("We were served on {date}. Our answer is due {n} {unit} later. What's the deadline?",
     "Your answer is due {due}, {n} {unit} after {start}."),
    ("Compute the date {n} {unit} after {date}.",
     "{n_cap} {unit} after {start} is {due}."),
    ("What date is {n} {unit} from {date}?",
     "{n_cap} {unit} from {start} lands on {due}."),
    ("The contract gives the buyer {n} {unit} from delivery on {date} to reject the goods. When does that window "
     "close?",
     "The rejection window closes on {due}."),
    ("Opposing counsel served discovery requests on {date}. If we have {n} {unit} to respond, when are responses "
     "due?",
     "Counting {n} {unit} from {start}, the responses are due {due}."),
    ("Notice of breach went out on {date} with a {n_adj} cure period. When does the cure period end?",
     "The cure period ends on {due}."),
    ("Judgment was entered on {date}. We have {n} {unit} to file the notice of appeal. What's the last day?",
     "The last day to file the notice of appeal is {due}."),
    ("Start date {date}, {n} {unit}. Due date?",
     "The due date is {due}."),
    ("Can you count {n} {unit} forward from {date} for me?",
     "Counting {n} {unit} forward from {start} gives {due}."),
    ("A data subject request arrived on {date}. We're treating the deadline as {n} {unit}. What date should we "
     "diary?",
     "Diary {due} as the response deadline."),
    ("Our client got the demand letter on {date}, and it gives {n} {unit} to pay. When does that run out?",
     "The {n_adj} payment period runs out on {due}."),
    ("If the clock starts on {date}, when do {n} {unit} end?",
     "{n_cap} {unit} starting from {start} end on {due}."),
    ("Please calculate a deadline: {n} {unit} starting {date}.",
     "The deadline is {due}."),
    ("The tenant received a notice on {date} giving {n} {unit} to cure. What's the last day?",
     "The tenant's last day to cure is {due}."),
]
BUSINESS_CAVEATS = ["This skips weekends but not public holidays, so check the court calendar.",
                    "Holidays are not excluded, so confirm against the holiday calendar.",
                    "Weekends are skipped; any holidays in the period would push it later."]
WEEKEND_CAVEAT = ("That is a {weekday}, so check whether the applicable rules move it to the next business day.")

NUM_WORDS = {1: "one", 2: "two", 3: "three", 5: "five", 7: "seven", 10: "ten", 14: "fourteen", 15: "fifteen",
             20: "twenty", 21: "twenty-one", 30: "thirty", 60: "sixty", 90: "ninety"}

REASONS = {
    "compute_deadline": [
        "The user gives a start date, a number of days and whether they are business days, so the deadline tool "
        "can compute the due date.",
        "Date arithmetic is error-prone, so I'll let compute_deadline count the days.",
        "The user wants a due date from a trigger date and a day count; the deadline tool computes it exactly.",
        "The start date and day count are stated, so I'll compute the deadline rather than estimate it.",
    ],
    "get_statute": [
        "The user names a code and section, so I'll fetch that section with get_statute.",
        "This asks what a specific section says, so I should look it up rather than rely on memory.",
        "The code and section are given; get_statute returns the text to summarise.",
    ],
    "search_case_law": [
        "The user wants cases on a topic in a named jurisdiction, so I'll search case law.",
        "This needs authorities, so I'll run search_case_law with the topic and jurisdiction.",
        "The topic, jurisdiction and start year are all stated, so a case-law search will answer this.",
    ],
    "parallel": [
        "The user asks for two independent things, so I'll make both calls at once.",
        "Both lookups are independent of each other, so they can run in parallel.",
        "Two separate tool results are needed; I'll request them together.",
    ],
}

# --------------------------------------------------------------------------------------------------------------
# No-tool material
# --------------------------------------------------------------------------------------------------------------
DEFINITIONS = [  # (term, answer, related statute or None)
    ("consideration", "Consideration is something of value each party gives or promises in exchange for the "
     "other's promise, such as money, services, or a promise not to do something. Without it, most promises are "
     "not enforceable as contracts.", None),
    ("promissory estoppel", "Promissory estoppel lets a court enforce a promise made without consideration when "
     "the other party reasonably relied on it to their detriment and only enforcement will avoid injustice.", None),
    ("the battle of the forms", "The battle of the forms is the conflict that arises when a buyer and seller "
     "exchange standard forms with different terms. For US sales of goods, UCC 2-207 decides which terms become "
     "part of the contract.", ("UCC", "2-207")),
    ("the implied warranty of merchantability", "It is a warranty, implied when a merchant sells goods of its "
     "kind, that the goods are fit for their ordinary purpose and would pass without objection in the trade. It "
     "can be disclaimed only in specific ways.", ("UCC", "2-314")),
    ("a firm offer", "A firm offer is a merchant's signed written offer to buy or sell goods that promises to stay "
     "open. Under the UCC it cannot be revoked for the stated time, up to three months, even without "
     "consideration.", ("UCC", "2-205")),
    ("the perfect tender rule", "The perfect tender rule lets a buyer of goods reject a delivery that fails in any "
     "respect to conform to the contract. It is softened by the seller's right to cure and by rules for "
     "installment contracts.", ("UCC", "2-601")),
    ("cover", "Cover is a buyer's purchase of substitute goods after the seller fails to deliver. The buyer can "
     "then recover the extra cost over the contract price, plus incidental and consequential damages.",
     ("UCC", "2-712")),
    ("a general release", "A general release is an agreement giving up all claims against another party. In "
     "California it does not reach unknown claims unless the protection of Civil Code section 1542 is expressly "
     "waived.", ("CA Civil Code", "1542")),
    ("a liquidated damages clause", "It is a contract term that fixes in advance the damages payable for a "
     "breach. Courts enforce it if it was a reasonable estimate of likely loss when agreed, but not if it is a "
     "penalty.", ("CA Civil Code", "1671")),
    ("summary judgment", "Summary judgment is a ruling that decides a claim without trial because there is no "
     "genuine dispute of material fact and one side is entitled to judgment as a matter of law.", ("FRCP", "56")),
    ("a motion to dismiss", "A motion to dismiss asks the court to end a claim without trial, usually because the "
     "complaint fails to state a legally valid claim or the court lacks jurisdiction.", ("NY CPLR", "3211")),
    ("class certification", "Class certification is the court's decision that a lawsuit may proceed on behalf of "
     "a group. The proposed class must show numerosity, commonality, typicality and adequate representation.",
     ("FRCP", "23")),
    ("a request for admission", "A request for admission asks another party to admit a specific fact or that a "
     "document is genuine. In federal court an unanswered request is deemed admitted after 30 days.",
     ("FRCP", "36")),
    ("an interrogatory", "An interrogatory is a written question one party serves on another in discovery, which "
     "must be answered in writing and under oath.", ("FRCP", "33")),
    ("hearsay", "Hearsay is an out-of-court statement offered to prove the truth of what it asserts. It is "
     "generally inadmissible unless an exclusion or exception applies.", ("FRE", "801")),
    ("the right to erasure", "Under the GDPR, individuals can ask a controller to delete their personal data in "
     "certain cases, such as when it is no longer needed or consent is withdrawn. It is also called the right to "
     "be forgotten.", ("GDPR", "17")),
    ("a data subject access request", "It is a request by an individual to an organisation for a copy of the "
     "personal data it holds about them and information about how it is used.", ("GDPR", "15")),
    ("a data protection impact assessment", "A DPIA is an assessment a controller must carry out before "
     "processing likely to pose a high risk to individuals, identifying the risks and the measures to reduce "
     "them.", ("GDPR", "35")),
    ("a data processing agreement", "It is the contract between a controller and a processor that sets out what "
     "the processor may do with personal data and its security and confidentiality obligations.", ("GDPR", "28")),
    ("a security interest", "A security interest is a creditor's interest in a debtor's property that secures "
     "payment of a debt, letting the creditor take the collateral if the debtor defaults.", ("UCC", "9-203")),
    ("the statute of frauds", "The statute of frauds requires certain contracts, such as sales of land or goods "
     "over a threshold, to be evidenced by a signed writing to be enforceable.", ("UCC", "2-201")),
    ("anticipatory repudiation", "Anticipatory repudiation is a clear statement or act by a party, before "
     "performance is due, that it will not perform. The other party may treat it as a breach right away.",
     ("UCC", "2-610")),
    ("unconscionability", "Unconscionability is a defense to enforcing a contract or term that was unfairly "
     "obtained and is unreasonably one-sided.", ("UCC", "2-302")),
    ("res judicata", "Res judicata, or claim preclusion, bars a party from relitigating a claim already decided "
     "on the merits in a final judgment between the same parties.", None),
    ("collateral estoppel", "Collateral estoppel, or issue preclusion, stops a party from relitigating an issue "
     "that was actually decided and necessary to the judgment in an earlier case.", None),
    ("the parol evidence rule", "The parol evidence rule generally bars evidence of earlier or contemporaneous "
     "agreements that contradict a written contract the parties intended as final.", None),
    ("an indemnity clause", "An indemnity clause is a promise by one party to cover another's losses or "
     "liabilities arising from specified events, such as third-party claims.", None),
    ("a force majeure clause", "A force majeure clause excuses a party from performing when listed events beyond "
     "its control, such as natural disasters or war, prevent performance.", None),
    ("estoppel", "Estoppel prevents a party from taking a position that contradicts its earlier words or conduct "
     "when another party reasonably relied on them to its detriment.", None),
    ("negligence", "Negligence is the failure to take reasonable care. A claim requires a duty, a breach of it, "
     "causation, and damage.", None),
    ("strict liability", "Strict liability makes a defendant liable for harm without proof of fault, for example "
     "for abnormally dangerous activities or some defective products.", None),
    ("vicarious liability", "Vicarious liability makes one person liable for another's wrong because of their "
     "relationship, most often an employer for an employee acting in the course of employment.", None),
    ("a fiduciary duty", "A fiduciary duty is an obligation to act in another's best interests, with loyalty and "
     "care, as trustees, agents and directors must.", None),
    ("an easement", "An easement is a right to use another person's land for a specific purpose, such as a right "
     "of way, without owning it.", None),
    ("adverse possession", "Adverse possession lets someone gain title to land by occupying it openly, "
     "exclusively and continuously without permission for a period set by law.", None),
    ("a lien", "A lien is a legal claim on property that secures a debt, allowing the property to be sold to pay "
     "the debt if it is not paid.", None),
    ("a statute of limitations", "A statute of limitations is the deadline for starting a lawsuit; after it runs, "
     "the claim is usually barred.", None),
    ("rescission", "Rescission unwinds a contract and returns the parties to where they were before it, for "
     "example after fraud or mutual mistake.", ("CA Civil Code", "1689")),
    ("specific performance", "Specific performance is a court order requiring a party to do what the contract "
     "requires, used when money damages would not be adequate, as with unique land.", None),
    ("an injunction", "An injunction is a court order requiring a party to do or stop doing something.",
     ("FRCP", "65")),
    ("discovery", "Discovery is the pre-trial process in which parties obtain evidence from each other through "
     "document requests, interrogatories, depositions and admissions.", ("FRCP", "26")),
    ("a deposition", "A deposition is sworn out-of-court testimony given in answer to a lawyer's questions and "
     "recorded for use in the case.", ("FRCP", "30")),
    ("a subpoena", "A subpoena is a court order requiring a person to testify or produce documents.", None),
    ("venue", "Venue is the particular court or place where a case should be heard, as distinct from whether the "
     "court has jurisdiction at all.", None),
    ("personal jurisdiction", "Personal jurisdiction is a court's power over a particular defendant, usually "
     "based on their presence, consent, or sufficient contacts with the forum.", None),
    ("a tolling agreement", "A tolling agreement is a contract between potential litigants to pause the statute "
     "of limitations while they try to resolve the dispute.", None),
    ("joint and several liability", "Joint and several liability means each liable party can be made to pay the "
     "whole amount, leaving them to seek contribution from the others.", None),
    ("a material breach", "A material breach is a failure of performance serious enough to defeat the essential "
     "purpose of the contract, letting the other party terminate and claim damages.", None),
    ("a good-faith obligation", "It is the duty to act honestly and fairly in performing and enforcing a "
     "contract, so as not to undermine the other party's benefit of the bargain.", ("UCC", "1-304")),
]
EVAL_TERMS = {"collateral estoppel", "a firm offer", "strict liability", "an easement", "a request for admission",
              "a data protection impact assessment", "a subpoena", "a tolling agreement", "the perfect tender rule"}
DEF_USER = ["What is {t}?", "Define {t}.", "Can you explain {t} in plain English?", "What does {t} mean?",
            "Quick question: what's {t}?", "In a sentence or two, what is {t}?", "Explain {t} to a new paralegal.",
            "I keep seeing {t} mentioned. What is it?", "How would you define {t}?",
            "Give me a short definition of {t}."]

GENERAL = [  # (question, answer)
    ("What's the difference between a statute and case law?", "A statute is a law passed by a legislature, "
     "while case law is the body of law made by judges' decisions interpreting statutes and developing common "
     "law principles."),
    ("What's the difference between a void and a voidable contract?", "A void contract has no legal effect from "
     "the start, while a voidable contract is valid until the party with the right to avoid it, for example after "
     "fraud, chooses to do so."),
    ("Why do contracts include a severability clause?", "So that if a court strikes down one provision, the rest "
     "of the contract survives instead of failing as a whole."),
    ("How does a motion to dismiss differ from a motion for summary judgment?", "A motion to dismiss tests whether "
     "the complaint states a claim, taking its allegations as true, while summary judgment looks at the evidence "
     "and asks whether there is a genuine factual dispute for trial."),
    ("How is a holding different from dicta?", "The holding is the court's ruling on the issue it had to decide "
     "and binds later courts; dicta are remarks not necessary to the decision and are at most persuasive."),
    ("Draft a one-sentence governing-law clause choosing Texas law.", "This Agreement shall be governed by and "
     "construed in accordance with the laws of the State of Texas, without regard to its conflict-of-laws "
     "principles."),
    ("Rewrite in plain English: 'The Licensee shall indemnify and hold harmless the Licensor from any and all "
     "claims.'", "The licensee must protect the licensor against, and pay for, any claims brought against the "
     "licensor."),
    ("What does 'time is of the essence' do in a contract?", "It makes the deadlines strict, so missing one is a "
     "material breach that can let the other party terminate, not just claim damages."),
    ("Should a confidentiality clause survive termination?", "Usually yes. State that the confidentiality "
     "obligations survive for a set period, or indefinitely for trade secrets, or they may end with the "
     "contract."),
    ("What's the difference between a controller and a processor under the GDPR?", "The controller decides why "
     "and how personal data is processed; the processor processes it on the controller's behalf and under its "
     "instructions."),
    ("What's the difference between mediation and arbitration?", "A mediator helps the parties negotiate their "
     "own settlement and imposes nothing, while an arbitrator hears the case and issues a binding decision."),
    ("When should I use 'shall' versus 'will' in drafting?", "Use 'shall' only to impose an obligation on a party "
     "and 'will' for statements about the future, or follow a consistent house style such as 'must' for "
     "obligations."),
    ("What's the difference between an exclusive and a non-exclusive license?", "An exclusive license bars even "
     "the licensor from granting the same rights to anyone else, while a non-exclusive license lets the licensor "
     "license others too."),
    ("Draft a short clause requiring notices to be in writing.", "All notices under this Agreement must be in "
     "writing and are effective when delivered by hand, by courier, or by email to the addresses set out above."),
    ("What's the difference between direct and consequential damages?", "Direct damages flow naturally from the "
     "breach itself, such as the cost of replacement goods, while consequential damages are further losses, such "
     "as lost profits, that depend on the victim's particular circumstances."),
    ("What is the difference between a representation and a warranty?", "A representation is a statement of fact "
     "that induces the contract, giving remedies for misrepresentation; a warranty is a contractual promise that a "
     "fact is true, giving a claim for breach."),
    ("Why would a party ask for a tolling agreement?", "To pause the limitation period while the parties "
     "negotiate, so the claimant need not sue just to protect its claim."),
    ("What's the difference between an NDA and a non-compete?", "An NDA stops someone from using or disclosing "
     "confidential information, while a non-compete stops them from working for or starting a competing "
     "business."),
    ("What should a litigation hold notice contain?", "It should identify the dispute, tell recipients to "
     "preserve all relevant documents and data including email and chat, suspend routine deletion, and name a "
     "contact for questions."),
    ("What does an 'entire agreement' clause do?", "It states that the written contract is the whole agreement, "
     "so earlier negotiations and side promises cannot be used to add to or contradict its terms."),
    ("What's the difference between a lease and a licence of land?", "A lease grants exclusive possession for a "
     "term and creates an interest in land; a licence is only personal permission to use the land."),
    ("Summarise the elements of a negligence claim.", "The claimant must show a duty of care, a breach of it, and "
     "damage caused by the breach that is not too remote."),
    ("What's the difference between an assignment and a novation?", "An assignment transfers a party's rights, "
     "but not its obligations, to someone else; a novation replaces a party entirely and needs everyone's "
     "consent."),
    ("Draft a one-sentence clause letting either party terminate on 30 days' written notice.", "Either party may "
     "terminate this Agreement for convenience by giving the other party at least thirty (30) days' prior written "
     "notice."),
    ("What's the difference between binding and persuasive authority?", "Binding authority must be followed, "
     "such as decisions of a higher court in the same jurisdiction, while persuasive authority may be considered "
     "but need not be followed."),
    ("What are the elements of a valid contract?", "Offer, acceptance, consideration (in common-law systems), an "
     "intention to create legal relations, capacity, and a lawful purpose."),
    ("Is a verbal agreement legally binding?", "Often yes, if the elements of a contract are present, but some "
     "contracts, such as sales of land, must be in writing, and oral terms are harder to prove."),
    ("What's the difference between a complaint and an answer?", "The complaint starts the lawsuit and sets out "
     "the plaintiff's claims; the answer is the defendant's response admitting or denying them and raising "
     "defenses."),
    ("What does 'without prejudice' mean on a letter?", "In English practice it marks a genuine attempt to settle, "
     "so the letter generally cannot be shown to the court as evidence of an admission."),
    ("What does a cure period mean in a contract?", "It is the time a party in breach is given, after notice, to "
     "fix the breach before the other party can terminate or take further action."),
    ("How do I know if a case is still good law?", "Check a citator such as Shepard's or KeyCite for later "
     "decisions that reversed, overruled, or criticised it before you rely on it."),
    ("What's the difference between an affidavit and a declaration?", "An affidavit is sworn before an officer "
     "such as a notary; a declaration is signed under penalty of perjury without one and is accepted in many "
     "courts."),
]
EVAL_GENERAL = {4, 11, 17, 22, 27, 31}  # indexes held out for eval

GREET_OPENERS = ["Hi", "Hello", "Hey", "Good morning", "Good afternoon", "Hi there"]
GREET_CORES = [
    ("what can you help me with?", "I can search case law by topic and jurisdiction, pull up sections of codes "
     "such as the UCC, FRCP or GDPR, and compute deadlines. I can also explain concepts and help with drafting."),
    ("what tools do you have?", "I have three: a case-law search, a statute lookup by code and section, and a "
     "deadline calculator that counts calendar or business days."),
    ("can you calculate filing deadlines?", "Yes. Give me the start date, the number of days and whether they are "
     "calendar or business days, and I'll compute the due date; note that I skip weekends but not holidays."),
    ("can you look up statutes?", "Yes. Tell me the code and section, for example UCC 2-207 or GDPR Article 17, "
     "and I'll pull up a summary of it."),
    ("do you have access to case law?", "Yes. I can search cases by topic in federal courts, California, New "
     "York, Texas, the UK or the EU, optionally from a given year."),
    ("are you a lawyer?", "No. I'm an AI assistant for research and drafting support, so a qualified lawyer "
     "should review anything you rely on."),
    ("can I rely on your answers as legal advice?", "No. My answers are research support, not legal advice; "
     "verify the authorities and have a lawyer review the conclusions."),
    ("which jurisdictions can you search?", "Case-law searches cover US federal courts, California, New York, "
     "Texas, the UK and the EU."),
    ("do you count holidays when computing deadlines?", "No. For business days I skip Saturdays and Sundays, but "
     "I don't know public or court holidays, so check the court calendar."),
    ("how should I phrase a research request?", "Give me the topic, the jurisdiction and, if you like, the "
     "earliest year, for example \"New York cases on adverse possession since 2010\"."),
    ("can you draft clauses?", "Yes. I can draft or revise short clauses; tell me the purpose, the governing law "
     "and any key terms."),
    ("I'm new to the team. How do I use you?", "Ask me in plain language: I can find cases, look up a section "
     "when you give the code and number, compute deadlines from a date, and explain legal terms."),
]
GREET_REPLY = {"Hi": "Hi! ", "Hello": "Hello! ", "Hey": "Hi! ", "Good morning": "Good morning! ",
               "Good afternoon": "Good afternoon! ", "Hi there": "Hi there! "}
GREET_PLAIN = [("Hi!", "Hi! I can search case law, look up statute sections and compute deadlines. What are you "
                "working on?"),
               ("Hello.", "Hello! How can I help: case research, a statute, or a deadline?"),
               ("Good morning!", "Good morning! What can I help you with today?"),
               ("Thanks, that's all for now.", "You're welcome. Good luck with the matter."),
               ("Thank you, that helps!", "Glad it helped. Let me know if you need a case search, a statute or a "
                "deadline."),
               ("Thanks!", "You're welcome!"),
               ("Hey, are you there?", "Yes, I'm here. What do you need?"),
               ("Good evening.", "Good evening! What can I help with?")]
THANKS = {"Thanks, that's all for now.", "Thank you, that helps!", "Thanks!"}

MT_LINK_USER = ["Can you pull {ref} so I can read it?", "Thanks. Show me {ref}, please.",
                "What does {ref} actually say?", "Please look up {ref} for the file.",
                "OK, get me the text of {ref}.", "Could you fetch {ref} too?"]


# --------------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------------
class Pools:
    def __init__(self, held_out):
        pick = (lambda inside: inside) if held_out else (lambda inside: not inside)
        self.statutes = [s for s in STATUTES if pick((s[0], s[1]) in EVAL_STATUTES)]
        self.topics = [t for t in TOPICS if pick(t[0] in EVAL_TOPICS)]
        self.defs = [d for d in DEFINITIONS if pick(d[0] in EVAL_TERMS)]
        self.general = [g for i, g in enumerate(GENERAL) if pick(i in EVAL_GENERAL)]
        greet = [(f"{o}, {c}", GREET_REPLY[o] + a) for o in GREET_OPENERS for c, a in GREET_CORES]
        greet += [(cap_first(c), a) for c, a in GREET_CORES] + GREET_PLAIN
        held = random.Random(5).sample(range(len(greet)), 14)
        self.greet = [g for i, g in enumerate(greet) if pick(i in held)]
        self.statute_keys = {(s[0], s[1]) for s in self.statutes}
        self.used = {}

    def pick(self, rng, items):
        """A random item among the least used so far, so that every entity of a split gets used."""
        fewest = min(self.used.get(repr(x), 0) for x in items)
        item = rng.choice([x for x in items if self.used.get(repr(x), 0) == fewest])
        self.used[repr(item)] = fewest + 1
        return item


def statute_request(rng, pools, stat=None):
    code, sec, title, text = stat or pools.pick(rng, pools.statutes)
    ref = rng.choice(ref_forms(code, sec))
    return {"code": code, "section": sec, "title": title, "text": text, "ref": ref}


def statute_answer(rng, s):
    return rng.choice(STATUTE_ANS).format(canon=canon_ref(s["code"], s["section"]), title=s["title"],
                                          title_lc=lc_first(s["title"]), text_lc=lc_first(s["text"]))


def statute_call(s):
    return ("get_statute", {"code": s["code"], "section": s["section"]},
            {"code": s["code"], "section": s["section"], "title": s["title"], "text": s["text"]})


def single_statute(rng, pools):
    s = statute_request(rng, pools)
    user = cap_first(rng.choice(STATUTE_USER).format(ref=s["ref"]))
    return user, [statute_call(s)], statute_answer(rng, s)


def case_request(rng, pools, topic=None, jur=None, k=None, year_from="random"):
    t = topic or pools.pick(rng, pools.topics)
    jur = jur or rng.choice(t[1])
    if year_from == "random":
        r = rng.random()
        year_from = rng.randint(2000, 2022) if r < 0.42 else (2024 if r < 0.45 else None)
    lo = max(year_from or 2001, MIN_YEAR.get(t[0], 2001))
    k = k or rng.choice([2, 3])
    cases = []
    if year_from is None or year_from <= 2022:
        names = set()
        for holding in rng.sample(t[2], k):
            name = case_name(rng, jur)
            while name in names:
                name = case_name(rng, jur)
            names.add(name)
            year = rng.randint(lo, 2024)
            cases.append({"name": name, "citation": citation(rng, jur, year), "year": year, "holding": holding})
        cases.sort(key=lambda c: -c["year"])
    args = {"query": t[0], "jurisdiction": jur}
    if year_from is not None:
        args["year_from"] = year_from
    adj = rng.choice(JUR_WORDS[jur][0])
    return {"topic": t, "jur": jur, "args": args, "cases": cases, "adj": adj, "inj": rng.choice(JUR_WORDS[jur][1]),
            "year_from": year_from}


def since_text(rng, year_from, forms):
    return "" if year_from is None else rng.choice(forms).format(y=year_from)


def case_items(rng, cases):
    style = rng.randrange(3)
    if style == 0:
        parts = [f"{c['name']}, {c['citation']}, holding that {lc_first(c['holding'])}" for c in cases]
        return "; ".join(parts[:-1]) + "; and " + parts[-1]
    if style == 1:
        parts = [f"{c['name']}, {c['citation']}: {lc_first(c['holding'])}" for c in cases]
        return "; ".join(parts)
    parts = [f"{c['name']}, {c['citation']}, which held that {lc_first(c['holding'])}" for c in cases]
    return "; ".join(parts)


def case_answer(rng, c):
    topic, cases, adj = c["topic"][0], c["cases"], c["adj"]
    since = since_text(rng, c["year_from"], SINCE_ANS)
    if not cases:
        return (f"I found no {adj} cases on {topic}{since}. Want me to search without the date limit or in "
                f"another jurisdiction?")
    k = {2: "two", 3: "three"}[len(cases)]
    choice = rng.randrange(5)
    if choice == 0:
        return f"I found {k} {adj} cases on {topic}{since}: {case_items(rng, cases)}."
    if choice == 1:
        return f"The search returned {case_items(rng, cases)}."
    if choice == 2:
        return f"Here are the most relevant {adj} results on {topic}: {case_items(rng, cases)}."
    if choice == 3:
        return " ".join(f"In {x['name']}, {x['citation']}, the court held that {lc_first(x['holding'])}."
                        for x in cases)
    return (f"Relevant {adj} authority on {topic}{since}: {case_items(rng, cases)}. Check that these are still "
            f"good law before citing them.")


def case_call(c):
    return ("search_case_law", c["args"], c["cases"])


def single_case(rng, pools):
    c = case_request(rng, pools)
    since = since_text(rng, c["year_from"], SINCE)
    user = cap_first(rng.choice(CASE_USER).format(adj=c["adj"], topic=c["topic"][0], inj=c["inj"], code=c["jur"],
                                                  since=since))
    return user, [case_call(c)], case_answer(rng, c)


def deadline_request(rng, business=None, n=None, start=None):
    start = start or START + timedelta(days=rng.randrange((END - START).days + 1))
    business = rng.random() < 0.45 if business is None else business
    if n is None:
        if business:
            n = rng.choice([1, 2, 3, 5, 5, 7, 10, 10, 14, 15, 20, 30]) if rng.random() < 0.7 else rng.randint(1, 40)
        else:
            n = (rng.choice([7, 10, 14, 20, 21, 28, 30, 30, 45, 60, 90, 120, 180])
                 if rng.random() < 0.7 else rng.randint(2, 120))
    if business:
        unit1, unit_adj = rng.choice([("business day", "business-day"), ("business day", "business-day"),
                                      ("working day", "working-day")])
    else:
        unit1, unit_adj = rng.choice([("calendar day", "calendar-day"), ("calendar day", "calendar-day"),
                                      ("day", "day")])
    unit = unit1 if n == 1 else unit1 + "s"
    due = compute_deadline(start, n, business)
    return {"start": start, "n": n, "business": business, "unit": unit, "n_adj": f"{n}-{unit_adj}", "due": due,
            "date_user": user_date(rng, start)}


def deadline_call(d):
    return ("compute_deadline", {"start_date": d["start"].isoformat(), "days": d["n"], "business_days": d["business"]},
            {"start_date": d["start"].isoformat(), "days": d["n"], "business_days": d["business"],
             "due_date": d["due"].isoformat(), "weekday": f"{d['due']:%A}"})


def deadline_caveat(rng, d):
    if d["business"] and rng.random() < 0.4:
        return " " + rng.choice(BUSINESS_CAVEATS)
    if not d["business"] and d["due"].weekday() >= 5:
        return " " + WEEKEND_CAVEAT.format(weekday=f"{d['due']:%A}")
    return ""


def single_deadline(rng, pools):
    d = deadline_request(rng)
    ut, at = rng.choice(DEADLINE_USER)
    fields = dict(n=d["n"], unit=d["unit"], n_adj=d["n_adj"], date=d["date_user"], start=long_date(d["start"]),
                  due=full_date(d["due"]), n_cap=cap_first(NUM_WORDS.get(d["n"], str(d["n"]))))
    return ut.format(**fields), [deadline_call(d)], at.format(**fields) + deadline_caveat(rng, d)


SINGLE = {"get_statute": single_statute, "search_case_law": single_case, "compute_deadline": single_deadline}


def parallel_statute_deadline(rng, pools):
    s, d = statute_request(rng, pools), deadline_request(rng)
    user = rng.choice([
        "Pull up {ref} and tell me the date {n} {unit} after {date}.",
        "Two things: what does {ref} say, and what's {n} {unit} from {date}?",
        "I need {ref}, plus the deadline {n} {unit} from {date}.",
        "Can you summarise {ref} and also count {n} {unit} from {date}?",
    ]).format(ref=s["ref"], n=d["n"], unit=d["unit"], date=d["date_user"])
    answer = (f"{statute_answer(rng, s)} Counting {d['n']} {d['unit']} from {long_date(d['start'])}, the deadline "
              f"is {full_date(d['due'])}.")
    return cap_first(user), [statute_call(s), deadline_call(d)], answer


def parallel_two_statutes(rng, pools):
    a, b = rng.sample(pools.statutes, 2)
    if rng.random() < 0.6:  # prefer two sections of the same code
        same = [s for s in pools.statutes if s[0] == a[0] and s != a]
        b = rng.choice(same) if same else b
    s1, s2 = statute_request(rng, pools, a), statute_request(rng, pools, b)
    user = rng.choice(["Compare {r1} and {r2}.", "What do {r1} and {r2} each say?",
                       "Pull both {r1} and {r2} for me.", "I need summaries of {r1} and {r2}."]
                      ).format(r1=s1["ref"], r2=s2["ref"])
    answer = (f"{canon_ref(s1['code'], s1['section'])} ({s1['title']}): {s1['text']} "
              f"{canon_ref(s2['code'], s2['section'])} ({s2['title']}): {s2['text']}")
    return cap_first(user), [statute_call(s1), statute_call(s2)], answer


def parallel_two_deadlines(rng, pools):
    d1 = deadline_request(rng)
    d2 = deadline_request(rng, start=d1["start"], business=rng.random() < 0.5)
    while d2["n"] == d1["n"] and d2["business"] == d1["business"]:
        d2 = deadline_request(rng, start=d1["start"])
    d2["date_user"] = d1["date_user"]
    user = rng.choice(["Starting from {date}, what's the date {n1} {u1} out and {n2} {u2} out?",
                       "Served on {date}: when are {n1} {u1} up, and when are {n2} {u2} up?",
                       "Give me two dates: {n1} {u1} and {n2} {u2} after {date}.",
                       "From {date}, compute both {n1} {u1} and {n2} {u2}."]
                      ).format(date=d1["date_user"], n1=d1["n"], u1=d1["unit"], n2=d2["n"], u2=d2["unit"])
    answer = (f"From {long_date(d1['start'])}, {d1['n']} {d1['unit']} brings you to {full_date(d1['due'])}, and "
              f"{d2['n']} {d2['unit']} to {full_date(d2['due'])}.")
    return cap_first(user), [deadline_call(d1), deadline_call(d2)], answer


def parallel_case_statute(rng, pools):
    linked = [t for t in pools.topics if t[3] and t[3] in pools.statute_keys]
    t = pools.pick(rng, linked)  # a topic and the section it turns on
    stat = next(s for s in pools.statutes if (s[0], s[1]) == t[3])
    c = case_request(rng, pools, topic=t, k=2, year_from=rng.choice([None, rng.randint(2005, 2020)]))
    s = statute_request(rng, pools, stat)
    since = since_text(rng, c["year_from"], SINCE)
    user = rng.choice(["Find {adj} cases on {topic}{since} and pull {ref}.",
                       "Get me {ref} and any {adj} case law on {topic}{since}.",
                       "For a memo on {topic}: pull {ref} and search {adj} cases{since}.",
                       "I need {ref} plus {adj} authority on {topic}{since}."]
                      ).format(adj=c["adj"], topic=t[0], since=since, ref=s["ref"])
    answer = f"{statute_answer(rng, s)} {cap_first(c['adj'])} cases on {t[0]}: {case_items(rng, c['cases'])}."
    return cap_first(user), [case_call(c), statute_call(s)], answer


def parallel_two_jurisdictions(rng, pools):
    t = rng.choice([t for t in pools.topics if len(t[1]) >= 2])
    ja, jb = rng.sample(t[1], 2)
    year_from = rng.choice([None, rng.randint(2005, 2020)])
    ca = case_request(rng, pools, topic=t, jur=ja, k=2, year_from=year_from)
    cb = case_request(rng, pools, topic=t, jur=jb, k=2, year_from=year_from)
    since = since_text(rng, year_from, SINCE)
    a_in, b_in = ca["inj"], cb["inj"]
    user = rng.choice(["Find cases on {topic} in {a_in} and in {b_in}{since}.",
                       "Compare {a} and {b} case law on {topic}{since}.",
                       "Search both {a} and {b} cases for {topic}{since}.",
                       "How do {a} and {b} courts treat {topic}? Cases{since}, please."]
                      ).format(topic=t[0], a_in=a_in, b_in=b_in, a=ca["adj"], b=cb["adj"], since=since)
    answer = (f"{cap_first(ca['adj'])}: {case_items(rng, ca['cases'])}. "
              f"{cap_first(cb['adj'])}: {case_items(rng, cb['cases'])}.")
    return cap_first(user), [case_call(ca), case_call(cb)], answer


PARALLEL = [parallel_statute_deadline, parallel_two_statutes, parallel_two_deadlines, parallel_case_statute,
            parallel_two_jurisdictions]


def def_exchange(rng, pools):
    term, answer, _ = pools.pick(rng, pools.defs)
    return cap_first(rng.choice(DEF_USER).format(t=term)), answer


def general_exchange(rng, pools):
    q, a = pools.pick(rng, pools.general)
    prefix = rng.choice(["", "", "", "Quick question: ", "For a memo: ", "Basic one: "]) if q.endswith("?") else ""
    return (prefix + q[0].lower() + q[1:] if prefix else q), a


def greet_exchange(rng, pools, opening=False):
    choices = [g for g in pools.greet if g[0] not in THANKS] if opening else pools.greet
    return pools.pick(rng, choices)


NOTOOL = {"definition": def_exchange, "general": general_exchange, "greeting": greet_exchange}


def tool_turns(rng, user, calls, answer, str_args, reasoning):
    call_msg = {"role": "assistant", "content": ""}
    if reasoning:
        call_msg["reasoning_content"] = rng.choice(REASONS["parallel" if len(calls) > 1 else calls[0][0]])
    call_msg["tool_calls"] = [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": name, "arguments": json.dumps(args) if str_args else args}}
        for i, (name, args, _) in enumerate(calls, 1)]
    msgs = [{"role": "user", "content": user}, call_msg]
    for i, (name, _, result) in enumerate(calls, 1):
        msgs.append({"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": json.dumps(result)})
    msgs.append({"role": "assistant", "content": answer})
    return msgs


def build(rng, pools, kind, sub, str_args, reasoning):
    if kind == "single":
        return tool_turns(rng, *SINGLE[sub](rng, pools), str_args, reasoning)
    if kind == "parallel":
        return tool_turns(rng, *PARALLEL[sub](rng, pools), str_args, reasoning)
    if kind == "no_tool":
        user, answer = NOTOOL[sub](rng, pools)
        return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    # multi-turn: a first exchange answered in text, then a request that needs a call
    if sub == "link":
        term, answer1, key = pools.pick(rng, [d for d in pools.defs if d[2] and d[2] in pools.statute_keys])
        user1 = cap_first(rng.choice(DEF_USER).format(t=term))
        s = statute_request(rng, pools, next(x for x in pools.statutes if (x[0], x[1]) == key))
        user2, calls, answer2 = (cap_first(rng.choice(MT_LINK_USER).format(ref=s["ref"])), [statute_call(s)],
                                 statute_answer(rng, s))
    else:
        user1, answer1 = greet_exchange(rng, pools, opening=True) if sub == "greeting" else \
            rng.choice([def_exchange, general_exchange])(rng, pools)
        user2, calls, answer2 = SINGLE[rng.choice(list(SINGLE))](rng, pools)
    return ([{"role": "user", "content": user1}, {"role": "assistant", "content": answer1}]
            + tool_turns(rng, user2, calls, answer2, str_args, reasoning))


def row_words(messages):
    n = 0
    for m in messages:
        n += len(m["content"].split()) + len(m.get("reasoning_content", "").split())
        for c in m.get("tool_calls", []):
            a = c["function"]["arguments"]
            n += len((a if isinstance(a, str) else json.dumps(a)).split())
    return n


def plan(rng, n_single, n_parallel, n_multi, notool):
    items = [("single", list(SINGLE)[i % 3]) for i in range(n_single)]
    items += [("parallel", i % len(PARALLEL)) for i in range(n_parallel)]
    items += [("multi_turn", ["link", "greeting", "qa"][i % 3]) for i in range(n_multi)]
    items += [("no_tool", sub) for sub, n in notool.items() for _ in range(n)]
    rng.shuffle(items)
    tool_rows = [i for i, (kind, _) in enumerate(items) if kind != "no_tool"]
    str_args = set(rng.sample(tool_rows, round(0.2 * len(tool_rows))))
    reasoning = set(rng.sample(tool_rows, round(0.1 * len(tool_rows))))
    return [(kind, sub, i in str_args, i in reasoning) for i, (kind, sub) in enumerate(items)]


def make_split(seed, pools, n_single, n_parallel, n_multi, notool, forbidden=frozenset()):
    rng = random.Random(seed)
    rows, stats, seen = [], [], set()
    for kind, sub, str_args, reasoning in plan(rng, n_single, n_parallel, n_multi, notool):
        system = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.85 else []
        for _ in range(200):
            msgs = system + build(rng, pools, kind, sub, str_args, reasoning)
            users = [m["content"] for m in msgs if m["role"] == "user"]
            if not (set(users) & (seen | forbidden)) and row_words(msgs) <= MAX_WORDS:
                break
        else:
            raise RuntimeError(f"could not build a new {kind}/{sub} row")
        seen.update(users)
        rows.append({"tools": TOOLS, "messages": msgs})
        stats.append((kind, sub, str_args, reasoning, row_words(msgs)))
    return rows, stats, seen


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def summary(name, stats, rows):
    from collections import Counter
    kinds = Counter(k for k, *_ in stats)
    subs = Counter(f"{k}/{s if isinstance(s, str) else PARALLEL[s].__name__[9:]}" for k, s, *_ in stats)
    print(f"{name}: {len(rows)} rows; " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(subs.items())))
    calls = Counter(c["function"]["name"] for r in rows for m in r["messages"] for c in m.get("tool_calls", []))
    print(f"  calls: {dict(sorted(calls.items()))}; string arguments in {sum(s[2] for s in stats)} rows; "
          f"reasoning_content in {sum(s[3] for s in stats)} rows; system prompt in "
          f"{sum(r['messages'][0]['role'] == 'system' for r in rows)} rows; max words {max(s[4] for s in stats)}")


def main():
    train, train_stats, train_users = make_split(TRAIN_SEED, Pools(held_out=False), 216, 36, 36,
                                                 {"definition": 30, "general": 24, "greeting": 18})
    evals, eval_stats, eval_users = make_split(EVAL_SEED, Pools(held_out=True), 36, 6, 6,
                                               {"definition": 5, "general": 4, "greeting": 3},
                                               forbidden=frozenset(train_users))
    assert not eval_users & train_users
    write_jsonl(HERE / "train.jsonl", train)
    write_jsonl(HERE / "eval.jsonl", evals)
    (HERE / "tools.json").write_text(json.dumps(TOOLS, indent=2) + "\n", encoding="utf-8")
    summary("train.jsonl", train_stats, train)
    summary("eval.jsonl", eval_stats, evals)


if __name__ == "__main__":
    main()
